"""One MLflow run, written the same way for a search trial, a promoted training and `hpo.train`.

What a run holds: params = the flattened resolved config and config.yaml; per validation (step =
validation index or epoch) the metrics of `PER_EPOCH_METRICS` found in the result; at the end the
`final_*` metrics, `iou_<class>` per class (a NaN IoU, a class absent from val, is left out) and
`device_seconds_total`, the overlays/, model/ and confusion.png a finished training left in its
folder; then FINISHED or FAILED (with an `error` tag). The callers differ only in when they write
(hpo.tracking.trial_logger queues calls from the Ray driver; hpo.tracking.train_tracker guards them
inside a training) and where the run lives (hpo.tracking.layouts).

Room `hpo.tracking`: the MLflow writers; never imports Optuna or PyTorch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from mlflow.entities import Metric, RunTag

from hpo.config import dump_yaml, flatten
from hpo.tracking.store import log_params
from hpo.trials import CONFUSION, MODEL_DIR, OVERLAYS

PER_EPOCH_METRICS = ("train_loss", "val_miou", "val_pixel_acc", "lr", "epoch_seconds",
                     "val_miou_raw", "val_pixel_acc_raw", "anneal_seconds",    # *_raw: annealed evaluation
                     "device_seconds")                                          # the cost ledger (hpo.results.ledger)


def now_ms() -> int:
    return int(time.time() * 1000)


def epoch_metrics(result: dict, step: int, ts: int | None = None) -> list[Metric]:
    """The per-validation metrics of one result."""
    ts = now_ms() if ts is None else ts
    return [Metric(k, float(result[k]), ts, step) for k in PER_EPOCH_METRICS if k in result]


def final_metrics(result: dict, step: int, ts: int | None = None) -> list[Metric]:
    """The one final-metric rule: `final_*`, `iou/<class>` as `iou_<class>`, `device_seconds_total`
    of a training's last result; NaNs and non-numbers left out."""
    ts = now_ms() if ts is None else ts
    return [Metric(k.replace("iou/", "iou_"), float(v), ts, step) for k, v in result.items()
            if (k.startswith(("iou/", "final_")) or k == "device_seconds_total")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]


def final_result(metrics: dict, per_class_iou: dict) -> dict:
    """A finished training's final evaluation (`val_*` metrics, per-class IoU) as a last result."""
    return {**{f"final_{k}": v for k, v in metrics.items() if k.startswith("val_")},
            **{f"iou/{name}": v for name, v in per_class_iou.items()}}


class RunWriter:
    """The calls that fill one run (`client` an MlflowClient, `run_id` an existing run)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def write_config(self, cfg: dict) -> None:
        log_params(self.client, self.run_id, flatten(cfg))
        self.client.log_text(self.run_id, dump_yaml(cfg), "config.yaml")

    def log(self, metrics: Iterable[Metric] = (), tags: dict[str, str] | None = None) -> None:
        self.client.log_batch(self.run_id, metrics=list(metrics),
                              tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

    def log_outputs(self, folder: str | Path | None, files: Iterable[str] = ()) -> None:
        """What a finished training left in `folder` (its checkpoint or output folder)."""
        if not folder:
            return
        for name in (OVERLAYS, MODEL_DIR):
            if Path(folder, name).is_dir():
                self.client.log_artifacts(self.run_id, str(Path(folder, name)), name)
        for name in (*files, CONFUSION):
            if Path(folder, name).is_file():
                self.client.log_artifact(self.run_id, str(Path(folder, name)))

    def close(self, failed: bool = False, error: str | None = None) -> None:
        if error:
            self.client.set_tag(self.run_id, "error", error[:5000])
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
