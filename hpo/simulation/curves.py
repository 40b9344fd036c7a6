"""Learning curves of known configs, what a replayed trial reports: a curve table (format:
docs/replay.md) or the trials of a finished search.

`CurveSource` holds, per config, its Optuna-encoded params and its scores at every validation for
one or more training seeds, whether and when it diverged, and simulated seconds per validation;
`snap` finds the known config nearest to a proposal (unit cube of the space: log knobs on their
log scale, ints over their range, categoricals by index). `from_table` reads a table under one of
its LR schedules; `from_search` a finished search's own logged curves, timed by Ray's result.json
where the Ray results are on this machine.

Room `hpo.simulation`: the replay; imports the tuning room (what decides) and never the execution
room (nothing here starts Ray or trains) or MLflow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.trials import ITERATION, ray_results
from hpo.tuning.calibration import to_unit


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

def from_table(path: Path, schedule: str | None = None, annealed: bool = False) -> CurveSource:
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
    return {tid: {int(r[ITERATION]): float(r["time_this_iter_s"]) for r in rows
                  if ITERATION in r and "time_this_iter_s" in r}
            for tid, rows in ray_results(exp_dir).items()}
