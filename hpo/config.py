"""Run configs: load, fill defaults, validate, address by dotted keys.

A run config is a plain nested dict (see docs/config.md). This module owns the sections that
orchestration reads (`data` basics, `optim`, `budget`, `eval`, `runtime`, `loss`, `seed`); the
`model` section is validated by `models.build_model` itself, the `data` details by `datasets.build`.
Pydantic models with `extra="forbid"` turn a typo into a one-line error naming the dotted key.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.config import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimSection(_Strict):
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    # LR schedule over the trial's budget (hpo/schedules.py): "poly" over the whole budget (the
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


class DataSection(BaseModel):
    # datasets.build validates the dataset-specific keys; here only what orchestration relies on.
    model_config = ConfigDict(extra="allow")
    name: Literal["synthetic", "cityscapes", "pascal_context"] = "synthetic"
    root: str | None = None
    crop: list[int] = [128, 128]
    batch_size: int = Field(8, ge=1)
    val_batch_size: int = Field(2, ge=1)
    workers: int = Field(0, ge=0)

    @field_validator("crop")
    @classmethod
    def _crop(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or any(c < 1 for c in v):
            raise ValueError("expected [height, width], both >= 1")
        return v


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    model: dict[str, Any]
    loss: LossSection = LossSection()
    data: DataSection = DataSection()
    optim: OptimSection = OptimSection()
    budget: BudgetSection = BudgetSection()
    eval: EvalSection = EvalSection()
    runtime: RuntimeSection = RuntimeSection()


def pydantic_error_line(err: ValidationError, prefix: str = "") -> str:
    """First pydantic error as `dotted.key: message` — one line, no traceback."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    key = f"{prefix}{key}" if key else prefix.rstrip(".")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    got = first.get("input")
    if first["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict):
        msg += f" (got {got!r})"
    return f"{key}: {msg}"


def normalize(cfg: dict) -> dict:
    """Validate the orchestration sections and fill their defaults; returns a new plain dict."""
    if not isinstance(cfg, dict):
        raise ConfigError("run config: expected a mapping at the top level")
    if "model" in cfg and not isinstance(cfg["model"], dict):
        raise ConfigError("model: expected a mapping")
    try:
        parsed = RunConfig.model_validate(cfg)
    except ValidationError as err:
        raise ConfigError(pydantic_error_line(err)) from None
    return parsed.model_dump(mode="json")


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
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def has_key(cfg: dict, dotted: str) -> bool:
    try:
        get_key(cfg, dotted)
        return True
    except KeyError:
        return False


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
