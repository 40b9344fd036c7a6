"""The MLflow run of a training outside Ray (`python -m hpo.train`), written inside the training.

`RunTracker` writes through the one run writer (hpo.tracking.run_writer), so a run from `hpo.train`
holds what a search trial's run holds. The run id is kept in `<out>/mlflow_run.json`, so `--resume`
continues the same run (steps already in MLflow are not written twice).

MLflow is optional at run time: any tracking failure (store unreachable, MLflow not installed on a
bare GPU box) prints one warning and the training goes on. Without a tracking URI the store is
MLflow's default (sqlite `mlflow.db` in the working directory; artifacts in `./mlruns`).
Registering logs no MLflow model flavour: the version's source is the run's `model/` artifact
folder (weights + config), which works offline with any store.

Room `hpo.tracking`: the MLflow writers; never imports Optuna or PyTorch (MLflow itself is
imported on first use, so a training without it still runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from hpo.tracking.store import get_or_create_experiment, register_model, resolve_tracking_uri
from hpo.training.files import write_text_atomic

RUN_FILE = "mlflow_run.json"
DEFAULT_EXPERIMENT = "ctxtune-train"


class WarnOnce:
    """One tracking outage is one warning, not one per call."""

    def __init__(self, stream=None):
        self.stream, self.warned = stream, False

    def __call__(self, what: str, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            print(f"warning: MLflow {what} failed ({type(exc).__name__}: {str(exc)[:200]}); "
                  f"training goes on, tracking may be incomplete", file=self.stream or sys.stderr, flush=True)


class RunTracker:
    """One training run in MLflow. Every call is guarded: tracking trouble never stops a training."""

    def __init__(self, tracking_uri: str | None = None, warn: WarnOnce | None = None):
        self.warn = warn or WarnOnce()
        self.uri = tracking_uri
        self.client = None
        self.run_id: str | None = None
        self.logged_steps: set[int] = set()

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            if self.client is None:
                from mlflow.tracking import MlflowClient

                self.uri = resolve_tracking_uri(self.uri)
                self.client = MlflowClient(tracking_uri=self.uri)
            return fn()
        except Exception as exc:  # noqa: BLE001 - see class docstring
            self.warn(what, exc)
            return None

    def _writer(self):
        from hpo.tracking.run_writer import RunWriter

        return RunWriter(self.client, self.run_id)

    def start(self, out: Path, cfg: dict, *, experiment: str | None = None, experiment_id: str | None = None,
              run_name: str | None = None, tags: dict[str, str] | None = None, resume: bool = False) -> str | None:
        """Continue the run recorded in `out/mlflow_run.json` (when `resume`), else create one."""
        out = Path(out)
        run_file = out / RUN_FILE
        if resume and run_file.is_file():
            recorded = json.loads(run_file.read_text())
            self.uri = self.uri or recorded.get("tracking_uri")

            def reopen():
                rid = recorded["run_id"]
                self.client.get_run(rid)
                self.client.update_run(rid, status="RUNNING")
                hist = self.client.get_metric_history(rid, "val_miou")
                self.logged_steps = {m.step for m in hist}
                return rid
            self.run_id = self._guard("resuming the run", reopen)
            if self.run_id:
                return self.run_id

        def create():
            eid = experiment_id or get_or_create_experiment(self.client, experiment or DEFAULT_EXPERIMENT)
            rid = self.client.create_run(eid, run_name=run_name, tags=dict(tags or {})).info.run_id
            self.run_id = rid
            self._writer().write_config(cfg)
            write_text_atomic(run_file, json.dumps({"run_id": rid, "tracking_uri": self.uri}))
            return rid

        self.run_id = self._guard("creating the run", create)
        return self.run_id

    def log_epoch(self, metrics: dict) -> None:
        """Metrics of one validation at step = epoch; steps already in MLflow (a resumed run
        re-trains the epochs after its last checkpoint) are not written twice."""
        step = int(metrics["epoch"])
        if not self.run_id or step in self.logged_steps:
            return

        def log():
            from hpo.tracking.run_writer import epoch_metrics

            self._writer().log(epoch_metrics(metrics, step))
            self.logged_steps.add(step)
        self._guard("logging metrics", log)

    def finish(self, out: Path, summary: dict, files: tuple[str, ...] = ("config.yaml",)) -> None:
        """Final metrics (`final_val_miou`, `iou_<class>`), pictures, weights and `files` of `out`;
        run FINISHED."""
        out = Path(out)
        if not self.run_id:
            return

        for metrics in summary.get("history", []):       # epochs a killed process never logged
            self.log_epoch(metrics)

        def log():
            from hpo.tracking.run_writer import final_metrics, final_result

            step = int(summary["final"]["epochs"])
            run = self._writer()
            run.log(final_metrics(final_result(summary["final"], summary["per_class_iou"]), step))
            run.log_outputs(out, files=files)
            run.close()
        self._guard("logging the final evaluation", log)

    def fail(self, reason: str) -> None:
        if self.run_id:
            self._guard("marking the run failed", lambda: self._writer().close(failed=True, error=reason))

    def register(self, name: str, tags: dict[str, str] | None = None) -> str | None:
        """A new version of registered model `name` whose source is this run's `model/` folder."""
        if not self.run_id:
            return None
        return self._guard("registering the model",
                           lambda: register_model(self.client, name, self.run_id, tags))
