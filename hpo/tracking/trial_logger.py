"""MLflow logging for Tune trials (a search's, a promotion's), done from the Ray driver only.

Trials never talk to MLflow: a Tune callback in the driver turns trial events into MLflow calls.
That sidesteps both traps found on this stack — several trial processes creating the same SQLite
store race ("table already exists"), and `setup_mlflow` without an explicit URI writes to a
throwaway per-trial database — and works the same against a tracking server.

Layout: one experiment per search name (tagged so the MLflow UI opens its runs table, not the
GenAI view), one parent run per search. Where a trial's run lives, what it is called and how it is
found again is a *run layout* (hpo.tracking.layouts): `SearchRuns` nests one run per search trial
under the parent; `PromotedRuns` makes top-level runs tagged with the search parent, rank and seed.
Either way the run is written by hpo.tracking.run_writer (what `hpo.train` writes too): params =
the flattened resolved config, metrics per validation, the final per-class IoU and `final_*`
metrics of its last result, a status tag, config.yaml, overlay PNGs, and whatever model/ weights or
confusion.png its checkpoint carries.

Room `hpo.tracking`: the MLflow writers. This module is the Ray side of it (a Tune callback); it
never imports Optuna or PyTorch.

Logging must never fail a trial or the search: every MLflow call goes through an ordered queue;
when the tracking store is unreachable the calls wait there (and are retried on the next event and
at the end of the search) instead of raising. Order is kept, so a run is created before its
metrics are written.

Fault handling (tests/test_faults.py):
- A down tracking server: the search sets MLflow's HTTP retries low (hpo.tracking.store), so a call
  fails in milliseconds into the queue instead of blocking the driver loop in MLflow's own
  backoff (minutes by default). `delayed_ops` counts failed attempts, `delayed_seconds` the time
  the queue was blocked; the end of the search prints both.
- Each queued call is safe to repeat: a trial's run is looked up by its layout's key tag (the
  Tune trial id; `ray_trial_id` for search trials) before one is created (the server may have
  created it and the reply been lost), params are written once, and a trial's final status once.
- A trial's run is created at its first result (or when it ends without one), not when its
  actor starts. Tune snapshots the experiment after every checkpoint, so by then the trial is
  almost surely in Ray's saved state: a SIGKILLed driver leaves no MLflow run for a trial that
  `--resume` would not know about (and re-create under a new id).
- On `--resume` the runs, last logged step, last node and finished trials are recovered from
  MLflow, so a trial restarted from an older checkpoint writes no step twice and no second
  final status.
- Every result names its Ray node and worker pid (hpo.execution.trainable); the run is tagged
  `ray_node_id` / `ray_pid` (the latest, when it changes).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from hpo.config import apply_overrides
from hpo.tracking.layouts import SearchRuns
from hpo.tracking.run_writer import RunWriter, epoch_metrics, final_metrics, now_ms
from hpo.tracking.store import find_runs
from hpo.tuning.calibration import MODE_CODE
from hpo.tuning.rung_check import RungCorrelation, verdict
from hpo.trials import ERROR, ITERATION, split_params, trial_error_line, trial_status

logger = logging.getLogger(__name__)

RETRY_EVERY_S = 2.0       # while the store is unreachable, events retry the queue at most this often


class MLflowTrialLogger(Callback):
    """Ray Tune callback: one MLflow run per trial, where `layout` says (SearchRuns, PromotedRuns)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, base: dict, max_t: int,
                 metric: str = "val_miou", rungs: list[int] | None = None, mode: str = "max", layout=None,
                 scheduler=None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.layout = layout or SearchRuns(parent_run_id)
        self.base = base
        self.max_t = max_t
        self.metric = metric
        self.run_ids: dict[str, str] = {}       # ray trial id -> mlflow run id
        self.logged_step: dict[str, int] = {}   # ray trial id -> last step written
        self.where: dict[str, tuple] = {}       # ray trial id -> (node id, pid) last tagged
        self.finished: set[str] = set()         # trials whose final status was submitted
        self._restored_checked = False
        self._with_params: set[str] = set()     # trials whose params + config.yaml are written
        self._queue: deque[Callable[[], None]] = deque()
        self._client: MlflowClient | None = None
        self.delayed_ops = 0                    # failed attempts of calls that then waited (outages)
        self.delayed_seconds = 0.0              # time the queue was blocked by an unreachable store
        self._blocked_since: float | None = None
        self._next_try = 0.0                    # while blocked, retry at most every RETRY_EVERY_S
        # Rung self-check (hpo.tuning.rung_check): scores at the ASHA rungs and the full budget.
        self.rung_check = RungCorrelation(sorted(set(rungs or []) | {max_t}), mode) if rungs else None
        # Calibrated early stopping (hpo.tuning.calibrated): its per-rung decisions go to the parent run.
        self.scheduler = scheduler if hasattr(scheduler, "rungs") else None

    # Tune pickles callbacks with the experiment; the client is rebuilt on the other side.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"], state["_queue"], state["_blocked_since"], state["_next_try"] = None, deque(), None, 0.0
        state["_restored_checked"] = False
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # --- the ordered, retrying queue -------------------------------------------------------
    def _submit(self, op: Callable[[], None]) -> None:
        self._queue.append(op)
        self.flush()

    def flush(self, deadline_s: float = 0.0) -> bool:
        """Run queued calls in order; on failure keep them (retry later). True when drained."""
        end = time.monotonic() + deadline_s
        if deadline_s <= 0 and self._blocked_since is not None and time.monotonic() < self._next_try:
            return False     # a hung server would otherwise cost a timeout on every trial event
        while self._queue:
            try:
                self._queue[0]()
                self._queue.popleft()
            except Exception as exc:  # noqa: BLE001 - tracking trouble must never stop the search
                self.delayed_ops += 1
                if self._blocked_since is None:
                    self._blocked_since = time.monotonic()
                    logger.warning("MLflow unreachable (%s); calls wait in the queue", type(exc).__name__)
                self._next_try = time.monotonic() + RETRY_EVERY_S
                if time.monotonic() >= end:
                    return False
                time.sleep(1.0)
        if self._blocked_since is not None:
            blocked = time.monotonic() - self._blocked_since
            self.delayed_seconds += blocked
            self._blocked_since = None
            logger.warning("MLflow reachable again after %.0f s; queued calls written", blocked)
        return True

    # --- resume: find the runs a previous driver created ------------------------------------
    def setup(self, **info):
        def recover():
            for run in find_runs(self.client, self.experiment_id, self.layout.filter()):
                tid = run.data.tags.get(self.layout.key_tag)
                if tid:
                    self.run_ids[tid] = run.info.run_id
                    self._with_params.add(tid)   # written in the op that registered the run
                    hist = self.client.get_metric_history(run.info.run_id, self.metric)
                    self.logged_step[tid] = max((m.step for m in hist), default=0)
                    self.where[tid] = (run.data.tags.get("ray_node_id"), run.data.tags.get("ray_pid"))
                    if run.info.status != "RUNNING":
                        self.finished.add(tid)
        self._submit(recover)

    # --- trial events -----------------------------------------------------------------------
    def _ensure_run(self, trial) -> None:
        tid = trial.trial_id
        if tid in self.run_ids:
            return
        overrides, labels = split_params(dict(trial.config))
        cfg = apply_overrides(self.base, overrides)
        key = self.layout.key_tag

        def create():
            # Repeatable step by step: a retry after a lost reply finds the run instead of making a second.
            if tid not in self.run_ids:
                found = find_runs(self.client, self.experiment_id, f"{self.layout.filter()} and tags.`{key}` = '{tid}'")
                if found:
                    self.run_ids[tid] = found[0].info.run_id
                else:
                    tags = {**self.layout.tags(tid, labels), "status": "running",
                            "knobs": ", ".join(f"{k}={v}" for k, v in overrides.items())}
                    run = self.client.create_run(self.experiment_id, run_name=self.layout.name(tid, labels), tags=tags)
                    self.run_ids[tid] = run.info.run_id
            if tid not in self._with_params:
                RunWriter(self.client, self.run_ids[tid]).write_config(cfg)
                self._with_params.add(tid)
        self._submit(create)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._ensure_run(trial)
        tid, step = trial.trial_id, int(result.get(ITERATION, 0))
        if step <= self.logged_step.get(tid, 0):
            return
        self.logged_step[tid] = step
        ts = now_ms()
        metrics = epoch_metrics(result, step, ts)
        self._check_rungs(tid, step, result.get(self.metric), ts)
        self._log_calibration(step, ts)
        where = (result.get("node_id"), str(result.get("pid")) if "pid" in result else None)
        tags = {}
        if where[0] and where != self.where.get(tid):
            self.where[tid] = where
            tags = {"ray_node_id": where[0], "ray_pid": where[1] or ""}
        self._submit(lambda: RunWriter(self.client, self.run_ids[tid]).log(metrics, tags))

    def _check_rungs(self, tid: str, step: int, value, ts: int) -> None:
        """A trial reached a milestone: when that completes a (rung, next rung) pair, log the pair's
        rank correlation over all trials that reached both to the parent run (step = trials)."""
        if self.rung_check is None or value is None:
            return
        done = self.rung_check.add(tid, step, float(value))
        if done is None:
            return
        rho, n = self.rung_check.pair(*done)
        if rho == rho:        # NaN until there are enough distinct scores
            metric = Metric(f"rung_corr_{done[0]}_{done[1]}", rho, ts, n)
            self._submit(lambda: self.client.log_batch(self.parent_run_id, metrics=[metric]))

    def _log_calibration(self, step: int, ts: int) -> None:
        """After the scheduler judged a trial at a rung: the rung's mode (0 pass, 1 raw, 2 predicted),
        both rank correlations and the trials cut so far, on the parent run (step = trials judged)."""
        stats = self.scheduler.rungs.get(step) if self.scheduler is not None else None
        if stats is None:
            return
        n = stats.cut + stats.kept
        values = {f"calib_mode_{step}": MODE_CODE[stats.mode], f"calib_rho_raw_{step}": stats.rho_raw,
                  f"calib_rho_pred_{step}": stats.rho_pred, f"calib_cut_{step}": stats.cut}
        metrics = [Metric(k, float(v), ts, n) for k, v in values.items() if v == v]
        self._submit(lambda: self.client.log_batch(self.parent_run_id, metrics=metrics))

    def rung_lines(self, unit: str = "epoch") -> list[str]:
        lines = [] if self.rung_check is None else [
            verdict(a, b, rho, n, self.max_t, unit) for a, b, rho, n in self.rung_check.table()]
        if self.scheduler is not None:
            lines += [stats.line(rung) for rung, stats in sorted(self.scheduler.rungs.items())]
        return lines

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, errored=True)

    def _finish(self, trial, errored: bool) -> None:
        tid = trial.trial_id
        if tid in self.finished:     # a resumed search re-ran a trial MLflow had already closed
            return
        self.finished.add(tid)
        self._ensure_run(trial)
        result = trial.last_result or {}
        status = trial_status(result, errored, self.max_t)
        ts = now_ms()
        step = int(result.get(ITERATION, 0))
        final = final_metrics(result, step, ts)
        estimate = self.scheduler.estimate(tid) if self.scheduler is not None else None
        if estimate is not None:     # cut by calibrated early stopping: what it predicted the trial would reach
            final.append(Metric(f"predicted_final_{self.metric}", float(estimate), ts, step))
        tags = {"status": status, "epochs_run": str(result.get(ITERATION, 0))}
        if "device_kind" in result:
            tags["device_kind"] = str(result["device_kind"])
        error = (result.get(ERROR) or trial_error_line(trial)) if status == "failed" else None
        # a data-parallel trial's checkpoints are its Train run's: Tune only gets their path
        ckpt_dir = trial.checkpoint.path if trial.checkpoint is not None else result.get("checkpoint_path")

        def finish():
            run = RunWriter(self.client, self.run_ids[tid])
            run.log(final, tags)
            run.log_outputs(ckpt_dir)
            run.close(failed=status == "failed", error=error)
        self._submit(finish)

    def on_step_begin(self, iteration, trials, **info):
        # A trial Ray restored as already ended (its driver was killed after Ray saved that, before
        # the MLflow queue closed its run) gets no event: close it once, at the first step. Not at
        # experiment end: after Ctrl+C Ray reports the running trials as TERMINATED there, and they
        # are resumed later.
        if self._restored_checked:
            return
        self._restored_checked = True
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR") and trial.trial_id not in self.finished:
                self._finish(trial, errored=trial.status == "ERROR")

    def on_experiment_end(self, trials, **info):
        lines = self.rung_lines()
        if lines:
            print("\n".join(lines), flush=True)
            text = "\n".join(lines) + "\n"
            tags = [RunTag("rung_check", "low" if any(": LOW" in ln for ln in lines) else "ok")]
            self._submit(lambda: (self.client.log_text(self.parent_run_id, text, "rung_check.txt"),
                                  self.client.log_batch(self.parent_run_id, tags=tags)))
        drained = self.flush(deadline_s=120.0)
        if self._blocked_since is not None:      # still down: count the time so far
            self.delayed_seconds += time.monotonic() - self._blocked_since
            self._blocked_since = None
        if self.delayed_ops:
            print(f"MLflow was unreachable for {self.delayed_seconds:.0f} s: {self.delayed_ops} failed "
                  f"attempt(s) waited in the queue; " + ("all calls written" if drained else
                  f"{len(self._queue)} call(s) could not be written"), flush=True)
