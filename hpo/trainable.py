"""The Ray Tune function trainable: one trial = one resolved run config trained by the engine.

The sampled knobs arrive as dotted keys (`model.selection.n3`) and are applied to the base
config; after each validation the trial reports its metrics with a checkpoint (engine state +
a few prediction-overlay PNGs, which the driver logs to MLflow). A restarted trial continues
from its last checkpoint. A diverged loss ends the trial at once with a `diverged` result, not
an exception: retrying a deterministic NaN would only burn the budget again.

Every result also names where it ran — `node_id` (Ray node) and `pid` (the worker process) — so
the driver can tag the MLflow run with it and a multi-node run shows which node did the work
(and a fault test can find the process to kill).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import ray
from ray import tune

from hpo.config import apply_overrides
from hpo.engine import DivergenceError, Trainer

STATE_FILE = "state.pt"


def write_overlays(trainer: Trainer, samples, out_dir: Path) -> None:
    from datasets.export import overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (image, pred, _gt) in enumerate(samples):
        picture = overlay(image, pred, trainer.data.palette)
        cv2.imwrite(str(out_dir / f"val_{i}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))


def run_trial(params: dict, base: dict) -> None:
    cfg = apply_overrides(base, params)
    trainer = Trainer(cfg, log=lambda *_: None)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            trainer.load(Path(ckpt_dir) / STATE_FILE)
    metric_so_far = {"val_miou": 0.0, "val_pixel_acc": 0.0}   # placeholders until the first validation
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def on_validation(trainer: Trainer, metrics: dict, val) -> None:
        report = {**metrics, **where}
        report.update({f"iou/{name}": v for name, v in val.per_class_iou.items()})
        metric_so_far.update({k: metrics[k] for k in metric_so_far})
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save(Path(tmp) / STATE_FILE)
            write_overlays(trainer, val.samples, Path(tmp) / "overlays")
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        trainer.fit(on_validation)
    except DivergenceError as err:
        # Placeholder metric keeps schedulers' strict metric checks happy; `diverged` marks it.
        tune.report({**metric_so_far, **where, "diverged": True, "error": str(err)})
