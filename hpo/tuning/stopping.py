"""When the whole search stops: a target, a budget, or a plateau of full-budget scores.

The space file's `stop:` section (hpo.tuning.space, README "Stopping a search"):

    stop:
      target: 20.0                       # a trial reached this score at the full budget
      budget: {device_hours: 4, epochs: 500}   # spent (hpo.results.ledger), whichever comes first
      plateau: {trials: 8, margin: null} # the best full-budget score has not improved by more than
                                         # margin over the last 8 trials that ran the full budget
      seed_spread: 0.7                   # margin: null uses this (the seed-to-seed spread of one
                                         # config's final score, e.g. hpo.promote's std); else 0

Only full-budget scores count for `target` and `plateau`: an ASHA-stopped trial's score at epoch 2
is not comparable with a finished trial's (Ray's TrialPlateauStopper compares them anyway).
`budget` counts everything spent, early-stopped and failed trials included; `epochs` counts
validations x `budget.val_every`.

The space file's `failure.stop_after` (default 3) adds one more rule: that many trials in a row
failed with the same error (a data or config mistake fails every trial alike). `FailureWatch`, a
Tune callback, hands each failed trial's last error line to the stopper.

`SearchStopper` is a Ray Tune `Stopper`: it reads every result; once a rule holds, every running
trial stops at its next result (at most one more validation each) and the searcher suggests no
new trial (hpo.tuning.searcher asks `triggered()`), the reason is written to `ctxtune_stop.json` beside
Ray's results, and the search prints it, tags the parent run with it and finishes as usual. Not
Ray's `stop_all`: in Ray 2.60 it ends running trials without telling the searcher, the scheduler
or the callbacks (`TuneController._stop_experiment_if_needed`), which would leave them RUNNING in
Optuna and MLflow. Ray pickles the stopper with the experiment when the search starts, so on
`--resume` it rebuilds what was spent and scored from the trials' result.json files before it
counts anything new; a search a rule already stopped stops again at once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune import Callback, Stopper

from hpo.trials import ITERATION, STOP_FILE, ray_results, trial_error_line



class SearchStopper(Stopper):
    def __init__(self, section, metric: str, mode: str, max_t: int, val_every: int, exp_dir: str | Path,
                 stop_after_failures: int = 0):
        self.stop_after_failures = stop_after_failures
        self.target = section.target
        self.budget_seconds = section.budget.device_hours * 3600 if section.budget and section.budget.device_hours else None
        self.budget_epochs = section.budget.epochs if section.budget else None
        plateau = section.plateau
        self.plateau_trials = plateau.trials if plateau else None
        self.margin = (plateau.margin if plateau and plateau.margin is not None else (section.seed_spread or 0.0))
        self.metric, self.sign, self.max_t, self.val_every = metric, (1 if mode == "max" else -1), max_t, val_every
        self.exp_dir = Path(exp_dir)
        self._loaded = False
        self._reset()

    def _reset(self) -> None:
        self.seconds, self.epochs = 0.0, 0
        self.best: float | None = None       # best full-budget score, in "higher is better" units
        self.since_best = 0                   # full-budget trials since the best improved by > margin
        self.reason: str | None = None
        self.last_step: dict[str, int] = {}   # trial id -> the last validation counted
        self.failures: list[str] = []         # error lines of the trials that failed in a row (reset by a success)

    # --- Ray's Stopper interface -------------------------------------------------------------------
    def __call__(self, trial_id: str, result: dict) -> bool:
        """Stop this trial: once a rule holds, every trial at its next result."""
        self._load()
        self._count(trial_id, result)
        return self.reason is not None

    def stop_all(self) -> bool:
        return False          # see the module docstring: trials stop one by one, notified

    def triggered(self) -> bool:
        """Whether a rule holds (the searcher then suggests no more trials)."""
        self._load()
        return self.reason is not None

    # --- bookkeeping ----------------------------------------------------------------------------------
    def _load(self) -> None:
        """First call of this process: what the experiment's results already hold (a resumed search)."""
        if self._loaded:
            return
        self._loaded = True
        self._reset()

        if self.exp_dir.is_dir():
            rows = sorted((r for rs in ray_results(self.exp_dir).values() for r in rs),
                          key=lambda r: r.get("timestamp", 0))
            for row in rows:
                self._count(row.get("trial_id", ""), row, write=False)
            if self.reason:
                self._write()

    def _count(self, trial_id: str, result: dict, write: bool = True) -> None:
        if ITERATION not in result or self.reason:
            return
        step = result[ITERATION]
        if result.get("done") and self.last_step.get(trial_id) == step:
            return      # Tune hands a function trainable's last result over once more when it returns
        self.last_step[trial_id] = step
        self.seconds += float(result.get("device_seconds", 0.0))
        self.epochs += self.val_every
        value = result.get(self.metric)
        if step >= self.max_t and isinstance(value, (int, float)) and math.isfinite(value):
            self._full_budget(trial_id, float(value))
        if self.reason is None and self.budget_seconds is not None and self.seconds >= self.budget_seconds:
            self.reason = (f"budget: {self.seconds / 3600:.3f} device-hours spent (stop.budget.device_hours "
                           f"{self.budget_seconds / 3600:g})")
        if self.reason is None and self.budget_epochs is not None and self.epochs >= self.budget_epochs:
            self.reason = f"budget: {self.epochs} epochs trained (stop.budget.epochs {self.budget_epochs})"
        if self.reason and write:
            self._write()

    def trial_ended(self, trial_id: str, error: str | None) -> None:
        """A trial ended (error: its last error line, None if it did not fail)."""
        self._load()
        if self.reason is not None:
            return
        self.failures = self.failures + [error] if error is not None else []
        n = self.stop_after_failures
        if n and len(self.failures) >= n and len(set(self.failures[-n:])) == 1:
            self.reason = f"failures: {n} trials in a row failed with the same error (failure.stop_after {n}): {error}"
            self._write()

    def _full_budget(self, trial_id: str, value: float) -> None:
        score = self.sign * value
        if self.target is not None and score >= self.sign * self.target:
            self.reason = (f"target: trial {trial_id} reached {self.metric} {value:.4g} at the full budget "
                           f"(stop.target {self.target:g})")
            return
        if self.best is None or score > self.best + self.margin:
            self.best, self.since_best = score, 0
            return
        self.since_best += 1
        if self.plateau_trials is not None and self.since_best >= self.plateau_trials:
            self.reason = (f"plateau: the best full-budget {self.metric} ({self.sign * self.best:.4g}) has not improved "
                           f"by more than {self.margin:g} over the last {self.since_best} full-budget trials "
                           f"(stop.plateau.trials {self.plateau_trials})")

    def _write(self) -> None:
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        (self.exp_dir / STOP_FILE).write_text(json.dumps({"reason": self.reason, "device_seconds": self.seconds,
                                                         "epochs": self.epochs}))


def stop_reason(exp_dir: Path) -> str | None:
    """Why a stop rule ended the search in `exp_dir`, or None."""
    path = Path(exp_dir) / STOP_FILE
    try:
        return json.loads(path.read_text())["reason"] if path.is_file() else None
    except (ValueError, KeyError):
        return None


class FailureWatch(Callback):
    """Tells the stopper how each trial ended: its last error line when it failed (after retries)."""

    def __init__(self, stopper: SearchStopper):
        self.stopper = stopper

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.stopper.trial_ended(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info):

        self.stopper.trial_ended(trial.trial_id, trial_error_line(trial))
