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
    """Build the model named by ``model.name`` from the whole run config.

    Strict: a key under ``model`` that the builder never read and that the model's presets do not
    have either (``model.drop_out``, ``model.metrocon.gird``) is a one-line ConfigError listing the
    keys known at that level. The builder's own reads and its presets are the model's schema, so
    the check cannot drift from what the code reads; a preset's key the current config does not use
    (``model.aspp`` with SpaceMeshLab's MetroCon² context) stays allowed."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"model: expected the run config as a mapping, got {type(cfg).__name__}")
    name = _check_name(get(cfg, "model.name"))
    watched = _ReadRecorder(cfg["model"])
    model = _BUILDERS[name]({**cfg, "model": watched})
    watched.read.add("name")
    known = [_PRESETS[name][kind].get("model", {}) for kind in PRESET_KINDS]
    for key, siblings in watched.unknown("model", known):
        raise ConfigError(f"{key}: unknown key for model {name}; known keys there: {', '.join(siblings)}")
    return model


class _ReadRecorder(dict):
    """A mapping that remembers which of its keys were read (nested mappings too)."""

    def __init__(self, data: dict):
        super().__init__({k: _ReadRecorder(v) if isinstance(v, dict) else v for k, v in data.items()})
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def _read_all(self):
        self.read.update(super().keys())

    def keys(self):
        self._read_all()
        return super().keys()

    def items(self):
        self._read_all()
        return super().items()

    def values(self):
        self._read_all()
        return super().values()

    def __iter__(self):
        self._read_all()
        return super().__iter__()

    def unknown(self, prefix: str, known: list) -> list[tuple[str, list[str]]]:
        """(dotted key, keys known at its level) for every key neither read nor in a preset (`known`)."""
        out = []
        known = [k for k in known if isinstance(k, dict)]
        for key in list(dict.keys(self)):
            value = dict.__getitem__(self, key)
            in_preset = [k[key] for k in known if key in k]
            if key not in self.read and not in_preset:
                siblings = sorted({str(k) for k in self.read} | {str(k) for p in known for k in p})
                out.append((f"{prefix}.{key}", siblings))
            elif isinstance(value, _ReadRecorder):
                out += value.unknown(f"{prefix}.{key}", in_preset)
        return out


def preset(name: str, kind: str = "toy") -> dict:
    """A deep copy of the ``toy`` or ``paper`` partial run config of model ``name``."""
    _check_name(name)
    if kind not in PRESET_KINDS:
        raise ConfigError(f"preset: expected one of {', '.join(PRESET_KINDS)}, got {kind!r}")
    return copy.deepcopy(_PRESETS[name][kind])
