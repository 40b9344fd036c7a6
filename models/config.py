"""Small helpers for reading the run config (a plain nested dict, see docs/config.md).

Every reader names the dotted key in its error, because that is also how a search space
addresses the knob: ``ConfigError("model.selection.n3: expected an int in [1, 64] ..., got 80")``.
"""
from __future__ import annotations

from typing import Any, Iterable

_MISSING = object()


class ConfigError(ValueError):
    """A bad run config. The message is one line and starts with the dotted key."""


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def get(cfg: dict, key: str, default: Any = _MISSING) -> Any:
    """Value at dotted ``key`` ("model.selection.n3"); ``default`` if absent (ConfigError if no default).

    A present ``None`` is returned as ``None`` (a search can say "use the default" by omitting the key).
    """
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise ConfigError(f"{key}: missing required key")
            return default
        node = node[part]
    return node


def section(cfg: dict, key: str) -> dict:
    """A dict-valued section (an absent one reads as ``{}``)."""
    value = get(cfg, key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {_fmt(value)}")
    return value


def get_int(cfg: dict, key: str, default: Any = _MISSING, *, lo: int | None = None,
            hi: int | None = None, why: str = "") -> int:
    """An int (bools rejected) within [lo, hi]; ``why`` explains the bound in the error."""
    value = get(cfg, key, default)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and lo is not None and value < lo:
        ok = False
    if ok and hi is not None and value > hi:
        ok = False
    if not ok:
        if lo is not None and hi is not None:
            rng = f" in [{lo}, {hi}]"
        elif lo is not None:
            rng = f" >= {lo}"
        elif hi is not None:
            rng = f" <= {hi}"
        else:
            rng = ""
        extra = f" ({why})" if why else ""
        raise ConfigError(f"{key}: expected an int{rng}{extra}, got {_fmt(value)}")
    return value


def get_float(cfg: dict, key: str, default: Any = _MISSING, *, lo: float | None = None,
              hi: float | None = None) -> float:
    value = get(cfg, key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        ok = False
    if not ok:
        rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (
            f" >= {lo}" if lo is not None else (f" <= {hi}" if hi is not None else ""))
        raise ConfigError(f"{key}: expected a number{rng}, got {_fmt(value)}")
    return float(value)


def get_bool(cfg: dict, key: str, default: Any = _MISSING) -> bool:
    value = get(cfg, key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {_fmt(value)}")
    return value


def get_choice(cfg: dict, key: str, choices: Iterable[Any], default: Any = _MISSING) -> Any:
    choices = list(choices)
    value = get(cfg, key, default)
    if isinstance(value, bool) or value not in choices:
        listed = ", ".join(_fmt(c) for c in choices)
        raise ConfigError(f"{key}: expected one of {listed}, got {_fmt(value)}")
    return value


def get_int_list(cfg: dict, key: str, default: Any = _MISSING, *, lo: int | None = None,
                 min_len: int = 1) -> list[int]:
    """A non-empty list of ints (each >= lo)."""
    value = get(cfg, key, default)
    ok = isinstance(value, (list, tuple)) and len(value) >= min_len and all(
        isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) for v in value)
    if not ok:
        bound = f" each >= {lo}" if lo is not None else ""
        raise ConfigError(f"{key}: expected a list of at least {min_len} ints{bound}, got {_fmt(value)}")
    return list(value)

