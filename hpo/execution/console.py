"""What the Ray driver of a search or a promotion prints, and what it keeps Ray from printing: a
compact line per validation (Ray's own table is off), one line per failed trial, no competing
resume hints; plus the process settings every Tune run of ctxtune needs.

Room `hpo.execution`: the Ray side (runner, trainables, promotion on Tune).
"""

from __future__ import annotations

import logging
import os
import time
import warnings

from hpo.tracking.store import fail_fast_http
from hpo.trials import ITERATION, trial_status


def progress_printer(metric: str, max_t: int, name=None, total: int | None = None):
    """A Tune callback printing a compact line per validation result (Ray's own table is off);
    `name(trial)` labels a trial (default "trial <id>"); `total`: the trials the run will have (the
    count says `3/15 done, 2 running`)."""
    from ray.tune import Callback


    label = name or (lambda trial: f"trial {trial.trial_id}")

    class ProgressPrinter(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            running = sum(t.status == "RUNNING" for t in trials)
            score = (f"{metric} {result[metric]:.2f} loss {result.get('train_loss', float('nan')):.3f}"
                     if metric in result else result.get("status", "no score"))
            print(f"[{time.strftime('%H:%M:%S')}] {label(trial)} epoch {result.get(ITERATION)}/"
                  f"{max_t} {score} ({done}/{total or len(trials)} done, {running} running)", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            print(f"[{time.strftime('%H:%M:%S')}] {label(trial)} "
                  f"{trial_status(trial.last_result, False, max_t)}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[{time.strftime('%H:%M:%S')}] {label(trial)} failed", flush=True)

    return ProgressPrinter()


def prepare_environment() -> None:
    """Settings every Tune run of ctxtune needs in the driver (a search's, a promotion's)."""
    # Per-epoch checkpoints of short toy trials trip Ray's snapshot-frequency warning constantly.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A diverged trial's last result carries its status and no metrics (hpo.execution.trainable). Tune's
    # check that every result holds the metric guards against typos, which the space file's schema
    # already rules out (scheduler.metric is one of the metrics trials report).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # An unreachable tracking server must fail fast into the MLflow logger's queue, not block the
    # driver loop (and with it every trial's results and checkpoints) for minutes per call.
    fail_fast_http()
    # A failed trial is one line in the console (Ray would print its whole traceback); the trace
    # stays in the trial's error file under Ray's results and its MLflow run's `error` tag.
    _add_filter("ray.tune.execution.tune_controller", OneLineTrialErrors())
    # ctxtune prints its own resume command (`python -m hpo.search ... --resume`); Ray's
    # "Resume experiment with: Tuner.restore(...)" would only compete with it. Token authentication
    # stays on: only its per-run notice goes.
    _add_filter("ray.tune.tune", DropRecords("Experiment has been interrupted"))
    _add_filter("ray._private.authentication.authentication_token_setup",
                DropRecords("Token authentication is enabled"))
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _add_filter(logger_name: str, log_filter: logging.Filter) -> None:
    log = logging.getLogger(logger_name)
    if not any(type(f) is type(log_filter) and vars(f) == vars(log_filter) for f in log.filters):
        log.addFilter(log_filter)


class DropRecords(logging.Filter):
    """Drops a logger's records whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


class OneLineTrialErrors(logging.Filter):
    """Ray's "Trial task failed for trial X" record, cut to one line: the exception's last line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Trial task failed"):
            exc = record.exc_info[1]
            last = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            record.msg = f"{record.msg}: {last[-1] if last else type(exc).__name__}"
            record.exc_info, record.exc_text, record.args = None, None, ()
        return True
