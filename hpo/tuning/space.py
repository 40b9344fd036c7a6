"""The search-space file: schema, validation and conversion to Optuna distributions.

One YAML file describes a search (README, "The space file"):

    experiment: {name, tracking_uri, storage_path}
    base:       a complete run config, or a path (relative to the space file) to one
    space:      {dotted.key: {type: int|float|categorical, ...}}
    search:     {sampler, seed, num_samples, max_concurrent, points_to_evaluate, feedback}
    scheduler:  {name: asha|none, metric, mode, time_attr, max_t, grace_period, reduction_factor,
                 trust: calibrated|raw, calibration: {...}}
    resources:  {cpu, gpu}
    failure:    {max_retries}
    stop:       {target, budget: {device_hours, epochs}, plateau: {trials, margin}, seed_spread}
    promote:    overrides applied to winners at full budget (hpo.promote)

Everything is checked before Ray starts; each problem is one `SpaceError` line naming the key.
Structural checks (N3 above a block's channels, dilation < 1, crop vs. stride) build the model on
PyTorch's `meta` device at every corner of the space, so they cost no memory and no compute.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpo.config import (ConfigError, apply_overrides, encode_choice, error_line, get_key, has_key, load_yaml,
                        normalize, set_key)


class SpaceError(ValueError):
    """A problem with a space file: one line naming the key and what was expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntDist(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False
    default: int | None = None          # the paper's value: evaluated first, a prior (hpo.tuning.priors)

    @model_validator(mode="after")
    def _check(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log scale needs low >= 1 and step 1")
        return self


class FloatDist(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)
    default: float | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class CategoricalDist(_Strict):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)
    default: Any = None


Distribution = Annotated[Union[IntDist, FloatDist, CategoricalDist], Field(discriminator="type")]


class ExperimentSection(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    tracking_uri: str | None = None
    storage_path: str = "./ray_results"


class PriorSection(_Strict):
    """Sampling around the knobs' `default:` values (hpo.tuning.priors)."""
    share: float = Field(0.5, ge=0, lt=1)     # share of trials drawn around the defaults; 0 = off
    width: float = Field(0.15, gt=0, le=1)    # spread around a default, as a share of the knob's range
    decay: float | None = Field(10, gt=0)     # trials after which the share halves; null = constant


class SearchSection(_Strict):
    sampler: Literal["tpe", "random", "cmaes", "gp", "nsga2"] = "tpe"
    seed: int = 0
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    points_to_evaluate: list[dict[str, Any]] = []
    # "pruned": ASHA-stopped trials are told to Optuna as PRUNED (ctxtune's honest feedback);
    # "complete": Ray's out-of-the-box behaviour, kept for the search-efficiency benchmark.
    feedback: Literal["pruned", "complete"] = "pruned"
    # How a diverged trial (NaN loss) is told to Optuna: "pruned" (its last finite scores), "worst"
    # (COMPLETE with the worst score seen so far), "fail" (ignored by TPE). hpo.tuning.searcher.
    diverged_feedback: Literal["pruned", "worst", "fail"] = "pruned"
    prior: PriorSection = PriorSection()


class CalibrationSection(_Strict):
    """Settings of calibrated early stopping (hpo.tuning.calibrated; docs/config.md)."""
    cold_start: int | None = Field(None, ge=2)       # first trials run the full budget; default max(8, 2 x concurrent)
    audit_share: float = Field(0.1, ge=0, le=1)      # share of later trials never stopped
    rho_min: float = Field(0.5, gt=-1, lt=1)         # lower bound a signal's rank correlation must reach to cut on it
    confidence: float = Field(0.8, gt=0.5, lt=1)     # of that lower bound
    tail: float = Field(0.95, gt=0, lt=1)            # quantile of the predictor's misses used as the cut's margin


class SchedulerSection(_Strict):
    name: Literal["asha", "none"] = "asha"
    metric: Literal["val_miou", "val_pixel_acc"] = "val_miou"   # what each validation reports (percent)
    mode: Literal["max", "min"] = "max"
    time_attr: Literal["training_iteration"] = "training_iteration"
    max_t: int | None = Field(None, ge=1)   # default: the number of validations in base.budget
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)
    # "calibrated": cut at a rung only on evidence that the cut is sound (hpo.tuning.calibrated);
    # "raw": Ray's plain ASHA, every rung trusted.
    trust: Literal["calibrated", "raw"] = "calibrated"
    brackets: int = Field(1, ge=1)           # trust raw only: Hyperband-style ASHA brackets
    calibration: CalibrationSection = CalibrationSection()


class ResourcesSection(_Strict):
    """Per trial, or with `workers` > 1 per data-parallel worker (a trial then holds workers x these)."""
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)
    workers: int = Field(1, ge=1)       # > 1: each trial is a DDP training on this many workers (Ray Train)
    sync_bn: bool = False               # DDP on GPUs: SyncBatchNorm across the workers

    @model_validator(mode="after")
    def _gpu_fraction(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError("gpu: fractions are only allowed below 1 (e.g. 0.5), whole numbers above")
        if self.workers > 1 and 0 < self.gpu < 1:
            raise ValueError(f"gpu: a data-parallel worker needs whole GPUs (NCCL ranks cannot share one), got "
                             f"{self.gpu} with workers {self.workers}")
        if self.sync_bn and (self.workers == 1 or not self.gpu):
            raise ValueError("sync_bn: needs workers > 1 on GPUs (torch's SyncBatchNorm has no CPU version)")
        return self


class FailureSection(_Strict):
    max_retries: int = Field(1, ge=0)
    # The search stops when this many trials in a row failed with the same error (0 = never):
    # a data or config mistake fails every trial alike, and each would cost a full start-up.
    stop_after: int = Field(3, ge=0)


class BudgetRule(_Strict):
    device_hours: float | None = Field(None, gt=0)    # GPU-hours (CPU-hours on CPU), hpo.results.ledger
    epochs: int | None = Field(None, ge=1)            # epochs trained by all trials together

    @model_validator(mode="after")
    def _one(self):
        if self.device_hours is None and self.epochs is None:
            raise ValueError("expected device_hours or epochs (or both)")
        return self


class PlateauRule(_Strict):
    trials: int = Field(ge=1)                         # full-budget trials without an improvement
    margin: float | None = Field(None, ge=0)          # null: stop.seed_spread, else 0


class StopSection(_Strict):
    """When the whole search stops (hpo.tuning.stopping); every rule is optional."""
    target: float | None = None
    budget: BudgetRule | None = None
    plateau: PlateauRule | None = None
    seed_spread: float | None = Field(None, ge=0)


class SpaceFile(_Strict):
    experiment: ExperimentSection
    base: dict[str, Any] | str
    space: dict[str, Distribution] = Field(min_length=1)
    search: SearchSection = SearchSection()
    scheduler: SchedulerSection = SchedulerSection()
    resources: ResourcesSection = ResourcesSection()
    failure: FailureSection = FailureSection()
    stop: StopSection = StopSection()
    promote: dict[str, Any] = {}


def load_space(path: str | Path, overrides: dict[str, Any] | None = None) -> SpaceFile:
    """Parse and fully validate a space file; raises SpaceError (one line) on any problem.

    `overrides` (dotted keys of the space file, e.g. the CLI's `experiment.name`) are applied to the
    raw file before validation, so they are checked like everything else."""
    path = Path(path)
    try:
        raw = load_yaml(path, "space")
    except ConfigError as err:
        raise SpaceError(str(err)) from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping with experiment/base/space sections")
    for key, value in (overrides or {}).items():
        if not isinstance(raw.get(key.split(".")[0], {}), dict):
            raise SpaceError(f"{key.split('.')[0]}: expected a mapping")
        set_key(raw, key, value)
    try:
        spec = SpaceFile.model_validate(raw)
    except ValidationError as err:
        raise SpaceError(_space_error_line(err)) from None
    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base)
        try:
            spec.base = load_yaml(base_path, "base run config")
        except ConfigError as err:
            raise SpaceError(f"base: {err}") from None
    validate(spec)
    return spec


def warn_if_from_scratch(base: dict, stream=None) -> str | None:
    """Print (stderr) and return the one-line warning when a depth >= 50 backbone has
    ``pretrained: null``: both papers fine-tune ImageNet weights, so a silent from-scratch search
    at paper size is a bug. ``pretrained: none`` is the explicit, silent way to train from scratch."""
    import sys

    from models.backbone import scratch_warning

    msg = scratch_warning(base)
    if msg:
        print(msg, file=stream or sys.stderr, flush=True)
    return msg


def _space_error_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # pydantic names the union member it tried ("space.x.int.low"); users never wrote that level.
    if len(loc) >= 3 and loc[0] == "space" and loc[2] in ("int", "float", "categorical"):
        del loc[2]
    if len(loc) == 2 and loc[0] == "space" and first["type"] in ("model_attributes_type", "dict_type",
                                                                   "model_type"):
        return f"space.{loc[1]}: expected a mapping like {{type: int, low: 1, high: 8}}"
    if len(loc) == 2 and loc[0] == "space" and first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"space.{loc[1]}.type: expected one of int, float, categorical (got {first.get('input', {}).get('type')!r})"
    return error_line(err, loc=tuple(loc))


def max_reports(base: dict) -> int:
    """How many validations (Tune results) a full-budget trial reports."""
    b = base["budget"]
    return math.ceil(b["epochs"] / b["val_every"]) if b["epochs"] % b["val_every"] else b["epochs"] // b["val_every"]


def validate(spec: SpaceFile) -> None:
    try:
        spec.base = normalize(spec.base)
    except ConfigError as err:
        raise SpaceError(f"base.{err}") from None
    base = spec.base
    _build_on_meta(base, where="base")
    for key, dist in spec.space.items():
        if not has_key(base, key):
            raise SpaceError(f"space.{key}: not a key of the base config (every searched key needs a default in base)")
        current = get_key(base, key)
        if isinstance(dist, (IntDist, FloatDist)) and (isinstance(current, (list, dict, str, bool)) ):
            raise SpaceError(f"space.{key}: a {dist.type} distribution cannot set this key "
                             f"(base value {current!r} is a {type(current).__name__}); use categorical")
        if isinstance(dist, CategoricalDist):
            for choice in dist.choices:
                if isinstance(choice, dict):
                    raise SpaceError(f"space.{key}.choices: a choice may be a scalar or a list, not a mapping")
    if base["runtime"]["device"] == "cuda" and not spec.resources.gpu:
        # each trial would hold no GPU and fail at its first step; say so once, before Ray starts
        raise SpaceError("base.runtime.device: cuda, but resources.gpu is 0, so trials get no GPU; set "
                         "resources.gpu (e.g. 1 or 0.5) or runtime.device: auto")
    sched = spec.scheduler
    full = max_reports(base)
    if sched.max_t is None:
        sched.max_t = full
    elif sched.max_t > full:
        raise SpaceError(f"scheduler.max_t: expected <= {full} (base.budget reports {full} validations), "
                         f"got {sched.max_t}")
    if sched.name == "asha" and sched.grace_period > sched.max_t:
        raise SpaceError(f"scheduler.grace_period: expected <= max_t ({sched.max_t}), got {sched.grace_period}")
    if base["optim"]["rungs"] is None and rung_milestones(spec):
        # optim.schedule: rung_poly anneals at the ASHA rungs; written into the base so every
        # trial's config.yaml carries them (hpo.train reproduces a trial), ignored by other schedules.
        base["optim"]["rungs"] = [r * base["budget"]["val_every"] for r in rung_milestones(spec)]
    if spec.search.max_concurrent > spec.search.num_samples:
        spec.search.max_concurrent = spec.search.num_samples
    for key, dist in spec.space.items():
        if dist.default is not None:
            _check_in(dist, dist.default, f"space.{key}.default")
    for i, point in enumerate(spec.search.points_to_evaluate):
        for key, value in point.items():
            if key not in spec.space:
                raise SpaceError(f"search.points_to_evaluate[{i}].{key}: not a key of space")
            _check_in(spec.space[key], value, f"search.points_to_evaluate[{i}].{key}")
    _check_structure(spec)


def rung_milestones(spec: SpaceFile) -> list[int]:
    """Validation indices where ASHA compares trials, below max_t (a milestone m is reached at ceil(m))."""
    from hpo.training.schedules import asha_rungs

    s = spec.scheduler
    if s.name != "asha":
        return []
    return sorted({math.ceil(r) for r in asha_rungs(s.grace_period, s.reduction_factor, s.max_t)} - {s.max_t})


def _check_in(dist: Distribution, value: Any, where: str) -> None:
    if isinstance(dist, CategoricalDist):
        if value not in dist.choices:
            raise SpaceError(f"{where}: expected one of {dist.choices}, got {value!r}")
    elif not isinstance(value, (int, float)) or isinstance(value, bool) or not dist.low <= value <= dist.high:
        raise SpaceError(f"{where}: expected a number in [{dist.low}, {dist.high}], got {value!r}")
    elif isinstance(dist, IntDist) and not float(value).is_integer():
        raise SpaceError(f"{where}: expected an int in [{dist.low}, {dist.high}], got {value!r}")


def corners(spec: SpaceFile, limit: int = 64) -> list[dict[str, Any]]:
    """Configs at the extremes of every knob (low/high, every choice), capped at `limit`."""
    options = []
    for key, dist in spec.space.items():
        vals = dist.choices if isinstance(dist, CategoricalDist) else [dist.low, dist.high]
        options.append([(key, v) for v in vals])
    out = []
    for combo in itertools.product(*options):
        out.append(dict(combo))
        if len(out) >= limit:
            break
    return out


def _build_on_meta(cfg: dict, where: str):
    """The model built on PyTorch's meta device (hpo.training.prepare.check_model); errors name `where`."""
    from hpo.training.prepare import check_model

    try:
        return check_model(cfg)
    except ValueError as err:
        raise SpaceError(f"{where}.{err}") from None


def _check_structure(spec: SpaceFile) -> None:
    """Build the model at every corner of the space."""
    for overrides in corners(spec):
        cfg = apply_overrides(spec.base, overrides)
        try:
            cfg = normalize(cfg)
            model = _build_on_meta(cfg, where="base")
        except (ConfigError, SpaceError) as err:
            knobs = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
            msg = str(err).removeprefix("base.")
            key = msg.split(":", 1)[0]
            prefix = f"space.{key}" if key in spec.space else f"base.{key}"
            raise SpaceError(f"{prefix}: {msg.split(':', 1)[-1].strip()} (at {knobs})") from None
        workers = spec.resources.workers
        if cfg["data"]["batch_size"] % workers:
            where = "space.data.batch_size" if "data.batch_size" in spec.space else "base.data.batch_size"
            raise SpaceError(f"{where}: expected a multiple of resources.workers ({workers}): it is the global "
                             f"batch the workers split, got {cfg['data']['batch_size']}")
        crop, stride = cfg["data"]["crop"], model.size_divisibility
        if crop[0] % stride or crop[1] % stride:
            where = "space.data.crop" if "data.crop" in spec.space else "base.data.crop"
            raise SpaceError(f"{where}: expected both sides divisible by {stride} (the model's size_divisibility), "
                             f"got {crop}")


def optuna_distributions(spec: SpaceFile) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, d in spec.space.items():
        if isinstance(d, IntDist):
            out[key] = optuna.distributions.IntDistribution(d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, FloatDist):
            out[key] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.log, step=d.step)
        else:
            out[key] = optuna.distributions.CategoricalDistribution([encode_choice(c) for c in d.choices])
    return out


def make_sampler(spec: SpaceFile) -> optuna.samplers.BaseSampler:
    """The configured Optuna sampler (seeded), mixed with prior draws when knobs have defaults."""
    from hpo.tuning.priors import with_priors

    s = spec.search
    defaults = {k: encode_choice(d.default) for k, d in spec.space.items() if d.default is not None}
    return with_priors(base_sampler(s), optuna_distributions(spec) if defaults else {}, defaults,
                       s.prior.share, s.prior.width, s.seed, s.prior.decay)


def base_sampler(s: SearchSection) -> optuna.samplers.BaseSampler:
    if s.sampler == "tpe":
        # Optuna 5's TPE is multivariate with a constant liar by default; group=True keeps
        # conditional spaces (a knob present only for some choices) well defined.
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=min(10, max(2, s.num_samples // 3)))
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed, warn_independent_sampling=False)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=s.seed)
    return optuna.samplers.NSGAIISampler(seed=s.seed)


def encoded_points(spec: SpaceFile) -> list[dict[str, Any]]:
    """What the search evaluates first: the knobs' defaults (one point), then points_to_evaluate."""
    defaults = {k: d.default for k, d in spec.space.items() if d.default is not None}
    points = ([defaults] if defaults else []) + [p for p in spec.search.points_to_evaluate if p != defaults]
    return [{k: encode_choice(v) for k, v in p.items()} for p in copy.deepcopy(points)]
