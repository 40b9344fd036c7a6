"""Replay a search in simulated time through the real searcher and scheduler objects.

    python -m hpo.replay                                   # the embedded curve table, the demo space's settings
    python -m hpo.replay --table my_curves.npz --trust raw # any curve table (docs/replay.md), plain ASHA
    python -m hpo.replay SEARCH                            # a finished search's own logged curves
    python -m hpo.replay SEARCH --sampler random --grace 2 # "would this have found my winner cheaper?"
    python -m hpo.replay SEARCH --prior-share 0            # the same search without sampling around its defaults

A replay is a search whose trials do not train: each suggestion is a config with known learning
curves (a curve table, or the trials of a finished search) and its results arrive from that curve at
simulated times. Everything else is the code a real `hpo.search` runs: `HonestOptunaSearch` with the
sampler `make_sampler` builds, behind Ray's `ConcurrencyLimiter`, and the scheduler
`hpo.tuning.calibrated.make_scheduler` builds from the same settings (calibrated early stopping or Ray's
`ASHAScheduler`), called in the order Ray's TuneController calls them (Syne Tune's simulator backend
follows the same design):

- a free slot asks the searcher (`suggest`) and adds the trial to the scheduler (`on_trial_add`);
- each result goes to `scheduler.on_trial_result`; unless that says STOP it goes on to
  `searcher.on_trial_result`; the trial's last result (its budget, a STOP, or a diverged loss)
  ends it with `scheduler.on_trial_complete` then `searcher.on_trial_complete`;
- events are taken from a heap of simulated finish times (ties in creation order); a stopped trial
  drops its future events; the replay ends at `num_samples` trials or an epoch budget, each
  validation costing the epochs since the previous one (a table's `epochs` list).

Result times: per-epoch seconds of the tabulated run; for a search source, each result's own
`time_this_iter_s` from Ray's per-trial result.json when the Ray results are on this machine (the
first one includes the trial's start-up), else 1 time unit per epoch. With one trial at a time the
order, and so every ASHA decision, does not depend on durations; with more it can.

Choices, documented because the real search cannot tell us:
- Snapping (`SnapToTable`): the sampler proposes, the proposal is snapped to the nearest known config
  in the unit cube of the space (log knobs on their log scale, ints over their range, categoricals
  by index) and the Optuna trial records *that* config's params, so the sampler learns from the
  configs that were evaluated. Tables: the nearest config not replayed yet (drawn without
  replacement); a finished search: the nearest (its own suggestions replay exactly).
- Training noise: each trial draws one of the tabulated training seeds (the replay's RNG).
- A trial that needs an epoch its source never measured (a search's early-stopped trial promoted
  further in the replay) ends there and counts as `censored`; the summary says how many.
- Regret: quality of the returned config = its mean final score over the tabulated seeds; the
  returned config is the completed trial with the best *observed* final score, as the leaderboard
  picks it. Regret = best mean final score in the source minus that.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from optuna.samplers import BaseSampler

from hpo.trials import ITERATION
from hpo.tuning.calibration import to_unit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TABLE = REPO / "benchmarks" / "tables" / "msglore_toy_curves.npz"
DEMO_SPACE = REPO / "search_spaces" / "demo.yaml"
TABLE_BUDGET = 32          # full trainings a table replay may spend by default


class ReplayError(ValueError):
    """Bad replay input: one line, exit code 2."""


@dataclass
class CurveSource:
    """Learning curves of known configs: what a replayed trial reports."""
    name: str
    distributions: dict[str, Any]         # dotted key -> optuna distribution (the searched space)
    params: list[dict[str, Any]]          # per config, Optuna-encoded values
    curves: np.ndarray                    # (configs, seeds, validations) scheduler metric; NaN = not measured
    finals: np.ndarray                    # (configs, seeds) full-budget score; NaN = never reached
    diverged_at: np.ndarray               # (configs, seeds) validation that diverged, 0 = none
    epoch_seconds: np.ndarray             # (configs, seeds[, validations]) simulated seconds per validation
    metric: str = "val_miou"
    mode: str = "max"
    epochs: np.ndarray | None = None      # epoch of each validation (ascending); default 1, 2, ..., validations
    kind: str = "table"                   # table: configs drawn without replacement | search: a search's own trials

    def __post_init__(self):
        self._unit = np.array([[to_unit(self.distributions[k], p.get(k)) for k in self.distributions]
                               for p in self.params], dtype=np.float64)
        if self.epochs is None:
            self.epochs = np.arange(1, self.curves.shape[2] + 1)
        self.epochs = np.asarray(self.epochs, dtype=np.int64)

    @property
    def max_t(self) -> int:
        return self.curves.shape[2]

    def cost(self, step: int) -> int:
        """Epochs trained between validation `step - 1` and validation `step` (1-based)."""
        return int(self.epochs[step - 1] - (self.epochs[step - 2] if step > 1 else 0))

    def seconds(self, config: int, seed: int, step: int) -> float:
        """Simulated duration of validation `step` (1-based) of a (config, seed) run."""
        if self.epoch_seconds.ndim == 3:
            return float(self.epoch_seconds[config, seed, min(step, self.max_t) - 1])
        return float(self.epoch_seconds[config, seed]) * self.cost(min(step, self.max_t))

    def snap(self, params: dict[str, Any], exclude: set[int] | frozenset = frozenset()) -> int:
        """Index of the nearest known config (unit-cube Euclidean distance), skipping `exclude`
        unless it holds every config."""
        x = np.array([to_unit(d, params.get(k)) for k, d in self.distributions.items()], dtype=np.float64)
        dist = np.nansum((self._unit - x) ** 2, axis=1)
        if exclude and len(exclude) < len(dist):
            dist[list(exclude)] = np.inf
        return int(np.argmin(dist))

    def quality(self) -> np.ndarray:
        """Mean final score of every config over its seeds (NaN where no seed reached the end)."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # a config no seed finished: NaN
            return np.nanmean(self.finals, axis=1) if self.finals.size else self.finals


# --- sources ---------------------------------------------------------------------------------

def from_table(path: Path = DEFAULT_TABLE, schedule: str | None = None, annealed: bool = False) -> CurveSource:
    """A tabulated benchmark (format: docs/replay.md) under one of its LR schedules (default: its first).
    `annealed`: the scheduler sees the annealed-evaluation score where the table has one."""
    import optuna

    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"{path}: table not found (build one with python -m benchmarks.curve_table)")
    try:
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        raw_all = z["raw"]
        if raw_all.ndim == 3:                 # (configs, seeds, validations): one schedule
            raw_all = raw_all[None]
    except (OSError, ValueError, KeyError) as err:
        raise ReplayError(f"{path}: not a curve table ({err}); the format is in docs/replay.md") from None
    names = list(meta.get("schedules") or ["default"])
    schedule = schedule or names[0]
    if schedule not in names:
        raise ReplayError(f"--schedule: expected one of {names}, got {schedule!r}")
    si = names.index(schedule)
    raw = raw_all[si].astype(np.float64)
    curves = raw.copy()
    if annealed:
        if "annealed" not in z.files:
            raise ReplayError(f"--annealed: {path.name} has no annealed scores")
        ann = z["annealed"][si].astype(np.float64)
        curves = np.where(np.isnan(ann), raw, ann)
    dists = {}
    for key, d in meta["space"].items():
        if d["type"] == "int":
            dists[key] = optuna.distributions.IntDistribution(d["low"], d["high"], log=d.get("log", False))
        elif d["type"] == "categorical":
            dists[key] = optuna.distributions.CategoricalDistribution(d["choices"])
        else:
            dists[key] = optuna.distributions.FloatDistribution(d["low"], d["high"], log=d.get("log", False))
    keys = list(meta["space"])

    def value(dist, v):
        if isinstance(dist, optuna.distributions.IntDistribution):
            return int(v)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            return dist.choices[int(v)]          # categoricals are stored as the choice's index
        return float(v)

    params = [{k: value(dists[k], v) for k, v in zip(keys, row)} for row in z["params"]]
    validations = raw.shape[2]
    epochs = np.asarray(meta.get("epochs") or range(1, validations + 1), dtype=np.int64)
    if len(epochs) != validations or np.any(np.diff(epochs) <= 0) or epochs[0] < 1:
        raise ReplayError(f"{path.name}: meta.epochs must be {validations} ascending epochs >= 1, got {list(epochs)}")
    def per_schedule(key):                    # an optional array, with or without the schedule axis
        a = z[key]
        return a if a.ndim == 2 else a[si]

    diverged = per_schedule("diverged_at").astype(int) if "diverged_at" in z.files else np.zeros(raw.shape[:2], int)
    seconds = (per_schedule("seconds").astype(np.float64) / epochs[-1] if "seconds" in z.files
               else np.ones(raw.shape[:2]))
    return CurveSource(name=f"{path.name}:{schedule}{'+annealed' if annealed else ''}", distributions=dists,
                       params=params, curves=curves, finals=raw[:, :, -1], diverged_at=diverged,
                       epoch_seconds=seconds, metric=meta.get("metric", "val_miou"), mode=meta.get("mode", "max"),
                       epochs=epochs)


def from_search(search) -> CurveSource:
    """A finished search (hpo.results.handle.SearchHandle): each trial is one known config with one seed;
    its curve stops where the search stopped it."""
    from hpo.tuning.space import optuna_distributions

    max_t = search.max_t
    trials = [t for t in search.trials if t.params]
    if not trials:
        raise ReplayError(f"search '{search.name}': no trials with parameters to replay")
    curves = np.full((len(trials), 1, max_t), np.nan)
    diverged = np.zeros((len(trials), 1), int)
    for i, t in enumerate(trials):
        for step, value in t.curve.items():
            if 1 <= step <= max_t and math.isfinite(value):
                curves[i, 0, step - 1] = value
        if t.status == "failed":
            diverged[i, 0] = min(t.last_step + 1, max_t)
    seconds = np.ones((len(trials), 1, max_t))
    timed = _ray_durations(search.exp_dir) if search.exp_dir else {}
    for i, t in enumerate(trials):
        known = timed.get(t.trial_id, {})
        mean = float(np.mean(list(known.values()))) if known else 1.0
        seconds[i, 0] = [known.get(step, mean) for step in range(1, max_t + 1)]
    return CurveSource(name=f"search {search.name}", distributions=optuna_distributions(search.spec),
                       params=[t.params for t in trials], curves=curves, finals=curves[:, :, -1],
                       diverged_at=diverged, epoch_seconds=seconds, metric=search.metric, mode=search.mode,
                       kind="search")


def _ray_durations(exp_dir: Path) -> dict[str, dict[int, float]]:
    """trial id -> {validation: seconds} from Ray's per-trial result.json files."""
    from hpo.trials import ray_results

    return {tid: {int(r[ITERATION]): float(r["time_this_iter_s"]) for r in rows
                  if ITERATION in r and "time_this_iter_s" in r}
            for tid, rows in ray_results(exp_dir).items()}


# --- the simulation ----------------------------------------------------------------------------

@dataclass
class ReplaySettings:
    sampler: str = "tpe"
    seed: int = 0
    scheduler: str = "asha"              # asha | none
    trust: str = "calibrated"            # calibrated (hpo/tuning/calibrated.py) | raw (Ray's plain ASHA)
    calibration: dict = field(default_factory=dict)   # scheduler.calibration settings
    grace_period: int = 1
    reduction_factor: float = 3
    brackets: int = 1                    # trust raw: ASHA brackets (Hyperband-style; 1 = plain ASHA)
    max_t: int | None = None             # default: the source's full budget
    max_concurrent: int = 2
    num_samples: int | None = None       # default: what `budget_epochs` buys at ASHA's expected cost
    budget_epochs: int | None = None
    feedback: str = "pruned"
    diverged_feedback: str = "pruned"     # as search.diverged_feedback
    points_to_evaluate: list[dict] = field(default_factory=list)
    defaults: dict = field(default_factory=dict)   # knob -> default (hpo/tuning/priors.py): evaluated first, a prior
    prior_share: float = 0.2
    prior_width: float = 0.15
    prior_decay: float | None = None
    snap: str | None = None              # unused: nearest config not replayed yet | nearest; default by source:
                                         # unused for tables, nearest for a finished search's own trials

    @classmethod
    def from_space(cls, spec, **over) -> "ReplaySettings":
        """The search and scheduler settings of a space file (hpo.tuning.space.SpaceFile)."""
        from hpo.config import encode_choice
        from hpo.tuning.space import encoded_points

        sc, se = spec.scheduler, spec.search
        return cls(**{**dict(
            sampler=se.sampler, seed=se.seed, scheduler=sc.name, trust=sc.trust,
            calibration=sc.calibration.model_dump(), grace_period=sc.grace_period,
            reduction_factor=sc.reduction_factor, brackets=sc.brackets, max_t=sc.max_t,
            max_concurrent=se.max_concurrent, num_samples=se.num_samples, feedback=se.feedback,
            diverged_feedback=se.diverged_feedback, points_to_evaluate=encoded_points(spec),
            defaults={k: encode_choice(d.default) for k, d in spec.space.items() if d.default is not None},
            prior_share=se.prior.share, prior_width=se.prior.width, prior_decay=se.prior.decay), **over})


@dataclass
class ReplayTrial:
    trial_id: str
    config: int                # index in the source
    seed: int                  # column in the source
    epochs: int = 0            # validations delivered
    status: str = "running"    # completed | early_stopped | failed | censored (running: cut by the budget)
    last: float | None = None


@dataclass
class ReplayResult:
    trials: list[ReplayTrial]
    events: list[tuple[float, str, int, float, str]]   # (time, trial, step, value, decision)
    trajectory: list[tuple[int, float, float]]         # (epochs used, observed best, its true quality)
    epochs: int
    best_quality: float                                 # best mean final score in the source
    scheduler: Any = None                               # the scheduler object, after the replay

    def regret_at(self, epochs: int) -> float:
        """Regret of the config the search would return after `epochs` epochs (inf: none yet)."""
        got = [q for e, _, q in self.trajectory if e <= epochs]
        return self.best_quality - got[-1] if got else math.inf

    def epochs_to(self, quality: float) -> int | None:
        """Epochs until the returned config's true quality reached `quality` (None: never)."""
        return next((e for e, _, q in self.trajectory if q >= quality), None)


def expected_epochs_per_trial(max_t: int, grace: int, rf: float) -> float:
    """Validations one trial costs on average under ASHA: a share 1/rf^k passes rung k."""
    from hpo.training.schedules import asha_rungs

    total, prev = 0.0, 0
    for k, rung in enumerate(asha_rungs(grace, rf, max_t) + [max_t]):
        total += (rung - prev) / rf ** k
        prev = rung
    return total


class SnapToTable(BaseSampler):
    """Replay only: an Optuna sampler that lets `base` propose a config, snaps the proposal to a
    tabulated config and returns that config's params, so the study records the config whose scores
    it is told (not the neighbour it asked for). `exclude_used`: the nearest config not replayed yet
    (configs drawn without replacement, as a table benchmark's random search does), until all were."""

    def __init__(self, base: BaseSampler, source: CurveSource, exclude_used: bool = True):
        self.base, self.source, self.exclude_used = base, source, exclude_used
        self.used: set[int] = set()

    def infer_relative_search_space(self, study, trial):
        return dict(self.source.distributions)

    def sample_relative(self, study, trial, search_space):
        inner = self.base.infer_relative_search_space(study, trial)
        proposal = dict(self.base.sample_relative(study, trial, inner) if inner else {})
        for name, dist in self.source.distributions.items():
            if name not in proposal:
                proposal[name] = self.base.sample_independent(study, trial, name, dist)
        i = self.source.snap(proposal, self.used if self.exclude_used else frozenset())
        self.used.add(i)
        return dict(self.source.params[i])

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.base.reseed_rng()


def build_scheduler(source: CurveSource, s: ReplaySettings, max_t: int, max_concurrent: int):
    """The scheduler a search with these settings builds (hpo.tuning.calibrated.make_scheduler)."""
    from hpo.tuning.calibrated import make_scheduler
    from hpo.tuning.space import CalibrationSection, SchedulerSection

    section = SchedulerSection(name=s.scheduler, max_t=max_t,
                               grace_period=s.grace_period, reduction_factor=s.reduction_factor, trust=s.trust,
                               brackets=s.brackets, calibration=CalibrationSection(**s.calibration))
    scheduler = make_scheduler(section, source.distributions, max_concurrent)
    scheduler.set_search_properties(source.metric, source.mode)     # as the Tuner does with its metric
    return scheduler


def replay(source: CurveSource, settings: ReplaySettings) -> ReplayResult:
    import optuna
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import ConcurrencyLimiter

    from hpo.tuning.priors import with_priors
    from hpo.tuning.searcher import HonestOptunaSearch
    from hpo.tuning.space import SearchSection, base_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = settings
    max_t = s.max_t or source.max_t
    if max_t > source.max_t:
        raise ReplayError(f"--max-t: the source has {source.max_t} validations per trial, got {max_t}")
    asha = s.scheduler == "asha"
    full_epochs = int(source.epochs[max_t - 1])
    num_samples = s.num_samples
    if num_samples is None:
        if not s.budget_epochs:
            raise ReplayError("give num_samples or budget_epochs")
        per_trial = (expected_epochs_per_trial(max_t, s.grace_period, s.reduction_factor) / max_t
                     if asha and s.trust == "raw" else 1.0) * full_epochs
        num_samples = math.ceil(s.budget_epochs / per_trial) if asha and s.trust == "raw" else 10 ** 6
    search = SearchSection(sampler=s.sampler, seed=s.seed, num_samples=num_samples,
                           max_concurrent=min(s.max_concurrent, num_samples), feedback=s.feedback)
    sampler = with_priors(base_sampler(search), source.distributions, s.defaults, s.prior_share, s.prior_width,
                          s.seed, s.prior_decay)
    snap = s.snap or ("unused" if source.kind == "table" else "nearest")
    sampler = SnapToTable(sampler, source, exclude_used=snap == "unused")
    points = ([dict(s.defaults)] if s.defaults else []) + [p for p in s.points_to_evaluate if p != s.defaults]
    points = [source.params[source.snap(p)] for p in points]      # what will really be replayed
    scheduler = build_scheduler(source, s, max_t, search.max_concurrent)
    searcher = HonestOptunaSearch(source.distributions, source.metric, source.mode, sampler=sampler, max_t=max_t,
                                  points_to_evaluate=points, feedback=s.feedback,
                                  diverged_feedback=s.diverged_feedback,
                                  final_estimate=getattr(scheduler, "estimate", None))
    limiter = ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent)
    rng = np.random.default_rng(s.seed)
    np.random.seed(s.seed)      # ASHAScheduler draws a trial's bracket from numpy's global RNG
    quality = source.quality()
    best_quality = float(np.nanmax(quality))
    sign = 1.0 if source.mode == "max" else -1.0

    heap: list[tuple[float, int, str, int]] = []
    seq = 0
    trials: dict[str, ReplayTrial] = {}
    handles: dict[str, Any] = {}
    events, trajectory = [], []
    running: set[str] = set()
    epochs = 0
    best_observed = -math.inf
    now = 0.0

    def out_of_budget() -> bool:
        return bool(s.budget_epochs) and epochs >= s.budget_epochs

    def fill() -> None:
        nonlocal seq
        while len(running) < search.max_concurrent and len(trials) < num_samples and not out_of_budget():
            tid = f"{len(trials):05d}"
            params = limiter.suggest(tid)
            if params is None:
                return
            ci = source.snap(params)
            seed = int(rng.integers(source.curves.shape[1]))
            trials[tid] = ReplayTrial(tid, ci, seed)
            handles[tid] = _trial_handle(tid, params)
            scheduler.on_trial_add(None, handles[tid])
            running.add(tid)
            heapq.heappush(heap, (now + source.seconds(ci, seed, 1), seq, tid, 1))
            seq += 1

    def finish(tid: str, result: dict, status: str) -> None:
        nonlocal best_observed
        t = trials[tid]
        t.status = status
        scheduler.on_trial_complete(None, handles[tid], result)
        limiter.on_trial_complete(tid, result=result, error=False)
        running.discard(tid)
        if status == "completed" and sign * t.last > best_observed:
            best_observed = sign * t.last
            trajectory.append((epochs, t.last, float(quality[t.config])))

    fill()
    while heap and not out_of_budget():
        now, _, tid, step = heapq.heappop(heap)
        t = trials[tid]
        value = source.curves[t.config, t.seed, step - 1]
        diverged = source.diverged_at[t.config, t.seed] == step
        if not diverged and not math.isfinite(value):
            # the source never measured this validation (a search's early-stopped trial): end it here
            t.status = "censored"
            scheduler.on_trial_remove(None, handles[tid])
            limiter.on_trial_complete(tid, result=None, error=True)
            running.discard(tid)
            fill()
            continue
        epochs += source.cost(step)
        t.epochs = step
        # as hpo/execution/trainable.py reports: a diverged step carries its status and no score
        result = ({"status": "diverged"} if diverged else {source.metric: float(value)})
        result.update({ITERATION: step, "trial_id": tid})
        if not diverged:
            t.last = float(value)
        decision = scheduler.on_trial_result(None, handles[tid], result)
        if decision != TrialScheduler.STOP:
            limiter.on_trial_result(tid, result)
        events.append((now, tid, step, result.get(source.metric, math.nan), "diverged" if diverged else decision))
        if diverged:
            finish(tid, result, "failed")
        elif decision == TrialScheduler.STOP or step >= max_t:
            finish(tid, result, "completed" if step >= max_t else "early_stopped")
        else:
            heapq.heappush(heap, (now + source.seconds(t.config, t.seed, step + 1), seq, tid, step + 1))
            seq += 1
        fill()
    return ReplayResult(list(trials.values()), events, trajectory, epochs, best_quality, scheduler)


def _trial_handle(trial_id: str, params: dict):
    """What Ray's schedulers are handed for a trial: a stub Trial (no actor, no storage).

    The one reach into Ray beyond its public API: `ray.tune.experiment.Trial` is a DeveloperAPI, and
    the schedulers are called with `tune_controller=None` (ASHA never reads it). Tested on Ray 2.60;
    pyproject.toml caps Ray below the next minor release for it."""
    from ray.tune.experiment import Trial

    return Trial("replay", config=params, trial_id=trial_id, stub=True)


# --- command line ------------------------------------------------------------------------------

def summary(source: CurveSource, settings: ReplaySettings, res: ReplayResult) -> str:
    labels = {"completed": "completed", "early_stopped": "early_stopped", "failed": "failed",
              "censored": "censored", "running": "still running at the budget"}
    counts = {k: sum(t.status == k for t in res.trials) for k in labels}
    best = res.trajectory[-1] if res.trajectory else None
    lines = [f"replay of {source.name}: {settings.sampler}, "
             + (f"ASHA ({settings.trust}) grace {settings.grace_period} rf {settings.reduction_factor}"
               + (f" brackets {settings.brackets}" if settings.brackets > 1 else "") if settings.scheduler == "asha"
                else "no early stopping")
             + f", {settings.max_concurrent} at a time, seed {settings.seed}",
             f"{len(res.trials)} trials ({', '.join(f'{v} {labels[k]}' for k, v in counts.items() if v)}), {res.epochs} epochs"]
    if best:
        t = next(t for t in res.trials if t.last == best[1] and t.status == "completed")
        knobs = ", ".join(f"{k}={_show(v)}" for k, v in source.params[t.config].items())
        lines.append(f"returned config (trial {t.trial_id}, found after {best[0]} epochs): {knobs}")
        lines.append(f"  observed {best[1]:.2f}, mean over seeds {best[2]:.2f}; best in the source "
                     f"{res.best_quality:.2f}; regret {res.best_quality - best[2]:.2f}")
    else:
        lines.append("no trial completed the full budget")
    for rung, stats in sorted(getattr(res.scheduler, "rungs", {}).items()):
        lines.append(stats.line(rung))
    if counts["censored"]:
        lines.append(f"note: {counts['censored']} trials needed epochs the source never measured (ended there)")
    return "\n".join(lines)


def _show(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def table_settings(source: CurveSource, space: Path = DEMO_SPACE) -> ReplaySettings:
    """What `hpo.replay --table FILE` replays by default: the search and scheduler settings of the demo
    space (its sampler, concurrency, ASHA ladder and trust), over the table's full length, with a budget
    of `TABLE_BUDGET` full trainings. The knobs' defaults come along only where the table has those knobs."""
    from hpo.tuning.space import load_space

    spec = load_space(space)
    settings = ReplaySettings.from_space(spec, max_t=None, num_samples=None,
                                         budget_epochs=TABLE_BUDGET * int(source.epochs[-1]))
    if not set(settings.defaults) <= set(source.distributions):
        settings.defaults, settings.points_to_evaluate = {}, []
    settings.points_to_evaluate = [p for p in settings.points_to_evaluate if set(p) <= set(source.distributions)]
    return settings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpo.replay", description=__doc__.splitlines()[0])
    p.add_argument("search", nargs="?", help="a finished search (name, Ray results dir or MLflow parent run id); "
                                             "default: a curve table")
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="a curve table (docs/replay.md)")
    p.add_argument("--schedule", help="table only: the LR schedule's curves (default: the table's first)")
    p.add_argument("--annealed", action="store_true", help="table only: rungs see annealed-evaluation scores")
    p.add_argument("--space", type=Path, default=DEMO_SPACE,
                   help="table only: whose search and scheduler settings to replay (default: the demo space)")
    p.add_argument("--sampler", choices=["tpe", "random", "cmaes", "gp", "nsga2"])
    p.add_argument("--seed", type=int, help="search seed (default: the space's own)")
    p.add_argument("--scheduler", choices=["asha", "none"])
    p.add_argument("--trust", choices=["calibrated", "raw"], help="ASHA: calibrated early stopping or plain ASHA")
    p.add_argument("--grace", type=int, help="ASHA grace period (validations)")
    p.add_argument("--rf", type=float, help="ASHA reduction factor")
    p.add_argument("--brackets", type=int, help="ASHA brackets (Hyperband-style, trust raw)")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--num-samples", type=int)
    p.add_argument("--budget-epochs", type=int, help="stop after this many epochs in all")
    p.add_argument("--feedback", choices=["pruned", "complete"])
    p.add_argument("--diverged-feedback", choices=["pruned", "worst", "fail"])
    p.add_argument("--prior-share", type=float, help="share of trials drawn around the knobs' defaults (0 = off)")
    p.add_argument("--storage-path", help="where the search's Ray results are (default ./ray_results)")
    p.add_argument("--tracking-uri")
    args = p.parse_args(argv)
    try:
        if args.search:
            from hpo.results.handle import SearchNotFound, find_search

            try:
                found = find_search(args.search, args.storage_path, args.tracking_uri)
            except SearchNotFound as err:
                raise ReplayError(str(err)) from None
            source = from_search(found)
            # as many trials as the search ran (a stop rule or an interrupt may have ended it early)
            settings = ReplaySettings.from_space(found.spec, num_samples=len(source.params))
        else:
            from hpo.tuning.space import SpaceError

            source = from_table(args.table, args.schedule, args.annealed)
            try:
                settings = table_settings(source, args.space)
            except SpaceError as err:
                raise ReplayError(str(err)) from None
        for flag, attr in [("sampler", "sampler"), ("scheduler", "scheduler"), ("trust", "trust"),
                           ("grace", "grace_period"), ("rf", "reduction_factor"), ("brackets", "brackets"),
                           ("max_concurrent", "max_concurrent"), ("feedback", "feedback"),
                           ("diverged_feedback", "diverged_feedback"), ("prior_share", "prior_share"),
                           ("seed", "seed")]:
            if getattr(args, flag) is not None:
                setattr(settings, attr, getattr(args, flag))
        if args.budget_epochs is not None:
            settings.budget_epochs, settings.num_samples = args.budget_epochs, None
        if args.num_samples is not None:
            settings.num_samples = args.num_samples
        print(summary(source, settings, replay(source, settings)))
    except ReplayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
