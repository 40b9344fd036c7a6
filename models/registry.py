"""Model registry: name -> builder(cfg) plus two preset partial run configs (``toy`` and ``paper``).

A builder takes the *whole* run config and reads ``model.*``; presets are partial run configs
(``{"model": {...}, "loss": {"aux_weights": {...}}}``) so ``build_model(preset("msglore", "toy"))``
works as is and a search can start from a preset and override dotted keys.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch.nn as nn

from models.config import ConfigError, get

Builder = Callable[[dict], nn.Module]

_BUILDERS: dict[str, Builder] = {}
_PRESETS: dict[str, dict[str, dict]] = {}
PRESET_KINDS = ("toy", "paper")


def register_model(name: str, *, toy: dict, paper: dict) -> Callable[[Builder], Builder]:
    """Decorator registering ``fn(cfg) -> nn.Module`` under ``name`` with its presets."""

    def deco(fn: Builder) -> Builder:
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        presets = {}
        for kind, partial in (("toy", toy), ("paper", paper)):
            partial = copy.deepcopy(partial)
            partial.setdefault("model", {}).setdefault("name", name)
            presets[kind] = partial
        _PRESETS[name] = presets
        return fn

    return deco


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def _check_name(name) -> str:
    if name not in _BUILDERS:
        raise ConfigError(f"model.name: unknown model {name!r}; expected one of {', '.join(model_names())}")
    return name


def build_model(cfg: dict) -> nn.Module:
    """Build the model named by ``model.name`` from the whole run config."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"model: expected the run config as a mapping, got {type(cfg).__name__}")
    name = _check_name(get(cfg, "model.name"))
    return _BUILDERS[name](cfg)


def preset(name: str, kind: str = "toy") -> dict:
    """A deep copy of the ``toy`` or ``paper`` partial run config of model ``name``."""
    _check_name(name)
    if kind not in PRESET_KINDS:
        raise ConfigError(f"preset: expected one of {', '.join(PRESET_KINDS)}, got {kind!r}")
    return copy.deepcopy(_PRESETS[name][kind])
