"""The Ray Tune function trainable: one trial = one resolved run config trained by the engine.

Used by both the search and the promotion (hpo/promotion.py), so a promoted training is the same
code path as the trial it re-trains.

- A trial's config is a flat dict of dotted overrides (`model.selection.n3`) applied to the base
  config. Keys under `ctxtune.` are labels, not config (a promotion's `ctxtune.rank`): the
  trainable drops them, the MLflow callback turns them into tags (`split_params`).
- After each validation the trial reports its metrics with a checkpoint (engine state + a few
  prediction-overlay PNGs, which the driver logs to MLflow). A restarted trial continues from its
  last checkpoint.
- `final_outputs=True` (promotion): the last report also carries the final evaluation
  (`final_val_miou`, with TTA when `eval.tta`; per-class IoU from it) and its checkpoint holds the
  weights, the confusion picture and the final overlays (hpo/outputs.py).
- A diverged loss ends the trial at once with one result `{"status": "diverged", "error": ...}`
  and no metrics, not an exception: retrying a deterministic NaN would only burn the budget again,
  and a result without metrics is not mistaken for a validation by anyone who reads results (the
  search turns off Tune's check that every result carries the metric; hpo/search_runner.py).
- Every result also names where it ran — `node_id` (Ray node) and `pid` (the worker process) —
  so the driver can tag the MLflow run with it and a fault test can find the process to kill.
- And what it cost (hpo/ledger.py): `device_seconds`, the wall time since the previous result
  times the devices the trial holds (`devices`, `device_kind`: GPUs when it has any, else CPU
  cores), and `device_seconds_total` so far (kept in the checkpoint, so a restarted trial goes on
  counting; the partial epoch a crash loses is not counted).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from hpo.config import apply_overrides
from hpo.engine import DivergenceError, Trainer
from hpo.outputs import OVERLAYS, final_evaluation, write_final_outputs, write_overlays
from hpo.searcher import DIVERGED

CHECKPOINT_FILE = "state.pt"
LEDGER_FILE = "ledger.json"
LABEL_PREFIX = "ctxtune."


def split_params(params: dict) -> tuple[dict, dict]:
    """(config overrides, labels) of a trial's params; labels lose their `ctxtune.` prefix."""
    overrides = {k: v for k, v in params.items() if not k.startswith(LABEL_PREFIX)}
    labels = {k[len(LABEL_PREFIX):]: v for k, v in params.items() if k.startswith(LABEL_PREFIX)}
    return overrides, labels


class Meter:
    """Device-seconds: wall time between results times the devices the trial holds."""

    def __init__(self, devices: float, kind: str, spent: float = 0.0):
        self.devices, self.kind, self.spent = devices, kind, spent
        self.last = time.perf_counter()

    def charge(self) -> dict:
        now = time.perf_counter()
        cost, self.last = (now - self.last) * self.devices, now
        self.spent += cost
        return {"device_seconds": cost, "device_seconds_total": self.spent, "device_kind": self.kind}


def run_trial(params: dict, base: dict, final_outputs: bool = False, devices: float = 1.0,
              device_kind: str = "cpu") -> None:
    meter = Meter(devices, device_kind)
    cfg = apply_overrides(base, split_params(params)[0])
    trainer = Trainer(cfg, log=lambda *_: None)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            trainer.load(Path(ckpt_dir) / CHECKPOINT_FILE)
            if (Path(ckpt_dir) / LEDGER_FILE).is_file():
                meter.spent = json.loads((Path(ckpt_dir) / LEDGER_FILE).read_text())["device_seconds_total"]
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    epochs = trainer.cfg["budget"]["epochs"]

    def on_validation(trainer: Trainer, metrics: dict, val) -> None:
        report = {**metrics, **where}
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save(Path(tmp) / CHECKPOINT_FILE)
            if final_outputs and trainer.epoch == epochs:
                val = final_evaluation(trainer, val)
                report.update({f"final_{k}": v for k, v in val.metrics.items()})
                write_final_outputs(trainer, trainer.cfg, val, Path(tmp))
            else:
                write_overlays(val.samples, trainer.data.palette, Path(tmp) / OVERLAYS)
            report.update({f"iou/{name}": v for name, v in val.per_class_iou.items()})
            report.update(meter.charge())
            (Path(tmp) / LEDGER_FILE).write_text(json.dumps({"device_seconds_total": meter.spent}))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        trainer.fit(on_validation)
    except DivergenceError as err:
        tune.report({"status": DIVERGED, "error": str(err), **where, **meter.charge()})
