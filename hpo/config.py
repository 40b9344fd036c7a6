"""Run configs, and the one config toolkit of `hpo`.

A run config is a plain nested dict (see docs/config.md). This module owns:
- the schema of the sections orchestration reads (`optim`, `budget`, `eval`, `runtime`, `loss`,
  `seed`) as pydantic models with `extra="forbid"`, so a typo is a one-line error naming the dotted
  key; `data` is validated by `datasets.config` (the one table of its defaults), `model` by
  `models.build_model` itself;
- `normalize(cfg)`: validate and fill every default, the form every trial config is logged in;
- dotted keys (`get_key`, `has_key`, `set_key`, `apply_overrides`, `flatten`), `deep_merge`, YAML
  (`load_yaml`, `dump_yaml`), and `error_line`, the one formatter of pydantic errors (space files
  use it too);
- the JSON encoding of list-valued categorical choices.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from datasets.config import DEFAULTS as DATA_DEFAULTS, parse_data_config
from datasets.errors import DatasetError
from models.config import ConfigError, get as _get

_MISSING = object()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimSection(_Strict):
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    # LR schedule over the trial's budget (hpo.training.schedules): "poly" over the whole budget (the
    # papers'), "wsd" warmup-stable-decay (constant, then a linear decay over the last
    # `decay_fraction`), "rung_poly" poly that reaches 0 at every rung epoch in `rungs`.
    schedule: Literal["poly", "wsd", "rung_poly"] = "poly"
    decay_fraction: float = Field(0.2, gt=0, le=1)
    warmup_epochs: float = Field(0, ge=0)
    rungs: list[int] | None = None      # rung_poly; a search fills it from its ASHA ladder

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (any(r < 1 for r in v) or sorted(set(v)) != v):
            raise ValueError("expected increasing epochs >= 1")
        return v


class BudgetSection(_Strict):
    epochs: int = Field(4, ge=1)
    iters_per_epoch: int | None = Field(None, ge=1)
    val_every: int = Field(1, ge=1)


class EvalSection(_Strict):
    tta: bool = False
    scales: list[float] = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    flip: bool = True
    sliding: bool = False
    overlays: int = Field(3, ge=0)   # prediction-overlay PNGs kept from the last validation
    # Annealed evaluation: before scoring an intermediate validation, fork the run, cool the LR
    # linearly to 0 over this many SGD steps, score the fork, and continue from the un-annealed
    # state (Trainer.annealed_validate). 0 = off. The final validation is never forked.
    anneal_steps: int = Field(0, ge=0)
    anneal_epochs: list[int] | None = None   # epochs that get a fork; None = every intermediate validation

    @field_validator("scales")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(s <= 0 for s in v):
            raise ValueError("expected a non-empty list of positive scales")
        return v


class RuntimeSection(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: Literal["auto", True, False] = "auto"
    cudnn_benchmark: Literal["auto", True, False] = "auto"
    compile: bool = False
    deterministic: bool = False
    threads: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(1, ge=1)   # epochs between checkpoints in hpo.train


class LossSection(_Strict):
    ignore_index: int = 255
    aux_weights: dict[str, float] = {}

    @field_validator("aux_weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for name, w in v.items():
            if w < 0:
                raise ValueError(f"weight of '{name}' must be >= 0, got {w}")
        return v


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    model: dict[str, Any]
    loss: LossSection = LossSection()
    data: dict[str, Any] = {}           # validated by datasets.config (normalize)
    optim: OptimSection = OptimSection()
    budget: BudgetSection = BudgetSection()
    eval: EvalSection = EvalSection()
    runtime: RuntimeSection = RuntimeSection()


def error_line(err: ValidationError, prefix: str = "", loc: tuple | None = None) -> str:
    """The first pydantic error as `dotted.key: message`: one line, no traceback. `loc` replaces the
    error's location (space files drop pydantic's union-member level)."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in (first["loc"] if loc is None else loc))
    key = f"{prefix}{key}" if key else prefix.rstrip(".")
    kind, msg = first["type"], first["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key is missing"
    got = first.get("input")
    if kind != "value_error" and not isinstance(got, dict):
        msg += f" (got {got!r})"
    return f"{key}: {msg}"


def normalize(cfg: dict) -> dict:
    """Validate the orchestration sections and `data`, fill every default; returns a new plain dict."""
    if not isinstance(cfg, dict):
        raise ConfigError("run config: expected a mapping at the top level")
    if "model" in cfg and not isinstance(cfg["model"], dict):
        raise ConfigError("model: expected a mapping")
    try:
        parsed = RunConfig.model_validate(cfg)
    except ValidationError as err:
        raise ConfigError(error_line(err)) from None
    out = parsed.model_dump(mode="json")
    try:
        parse_data_config(out)                  # every data key, with the dataset's own messages
    except DatasetError as err:
        raise ConfigError(str(err)) from None
    out["data"] = {**copy.deepcopy(DATA_DEFAULTS), **out["data"]}
    return out


def load_yaml(path: str | Path, what: str = "config") -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None


def load_run_config(path: str | Path) -> dict:
    return normalize(load_yaml(path, "run config"))


class _NoAliasDumper(yaml.SafeDumper):
    """Configs that share a list object (rows = cols) must not come out as YAML anchors."""

    def ignore_aliases(self, data):
        return True


def dump_yaml(cfg: dict) -> str:
    return yaml.dump(cfg, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=None)


def get_key(cfg: dict, dotted: str) -> Any:
    """Value at `dotted` ("model.selection.n3"); ConfigError naming the key when it is absent."""
    return _get(cfg, dotted)


def has_key(cfg: dict, dotted: str) -> bool:
    return _get(cfg, dotted, _MISSING) is not _MISSING


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def apply_overrides(base: dict, overrides: dict[str, Any]) -> dict:
    """Deep copy of `base` with dotted-key overrides (the search's sampled knobs) applied."""
    cfg = copy.deepcopy(base)
    for key, value in overrides.items():
        set_key(cfg, key, decode_choice(value))
    return cfg


def deep_merge(base: dict, override: dict) -> dict:
    """New dict: a partial config `override` merged into `base` (dicts merge, anything else
    replaces); nothing is shared with either input."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a nested config (MLflow params, leaderboards)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Optuna's categorical distribution only holds scalars, so list-valued choices (a dilation grid such
# as [[6,12,18],[6,12,18]]) travel through the sampler as JSON strings with this marker.
_JSON_MARK = "json:"


def encode_choice(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return _JSON_MARK + json.dumps(value, separators=(",", ":"))
    return value


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_JSON_MARK):
        return json.loads(value[len(_JSON_MARK):])
    return value


def display_value(value: Any) -> Any:
    """Readable form of a knob value: list-valued choices shown as lists, not as json: strings."""
    decoded = decode_choice(value)
    return str(decoded) if decoded is not value else value
