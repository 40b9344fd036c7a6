"""A checkpoint scored on a run config's val split: the library behind `python -m hpo.evaluate`.

mIoU and per-class IoU (the dataset's class names), single-scale or with multi-scale + flip TTA
(`eval.scales`), sliding window when `eval.sliding` is on; the validation loop is the trainer's
(`validation_pass`). With `export_dir` it writes predictions in the official Cityscapes evaluator's
format (label-id PNGs named after the ground truth) under `DIR/labelIds/` and colour overlays (the
dataset's palette) under `DIR/overlays/`; for a folder dataset (`folder`, `camvid`) and
Pascal-Context the predictions are class-index PNGs (the order of the dataset's classes) under
`DIR/labels/`. Room `hpo.training`: plain PyTorch, never imports Ray, Optuna or MLflow.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

CITYSCAPES_IDS = ("cityscapes", "synthetic")     # datasets whose predictions are exported as label ids


def export_folder(data_name: str, export_dir: str | Path) -> Path:
    """Where `evaluate` writes the prediction PNGs of dataset `data_name`."""
    return Path(export_dir) / ("labelIds" if data_name in CITYSCAPES_IDS else "labels")


@torch.no_grad()
def evaluate(cfg: dict, checkpoint: str, tta: bool = False, export_dir: str | None = None) -> dict:
    import datasets
    from datasets.export import export_cityscapes, overlay, save_png
    from datasets.transforms import denormalize
    from hpo.training.trainer import load_model_weights, resolve_device, scores, validation_pass
    from models import build_model

    device = resolve_device(cfg)
    data = datasets.build(cfg)
    model = build_model(cfg).to(device).eval()
    load_model_weights(model, checkpoint)
    out = Path(export_dir) if export_dir else None
    gt_counts = torch.zeros(data.num_classes, dtype=torch.int64)

    def count_and_export(batch, pred, label):
        valid = batch["label"][batch["label"] != data.ignore_index]
        gt_counts.add_(torch.bincount(valid.flatten(), minlength=data.num_classes))
        if out is None:
            return
        for i, name in enumerate(batch["name"]):
            p = pred[i].cpu().numpy().astype(np.uint8)
            if data.name in CITYSCAPES_IDS:
                export_cityscapes(p, name, export_folder(data.name, out))
            else:                       # class indices, named after the image
                save_png(str(export_folder(data.name, out) / f"{name}.png"), p)
            pic = overlay(denormalize(batch["image"][i]), p, data.palette)
            (out / "overlays").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / "overlays" / (Path(name).stem + ".png")), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))

    cm = validation_pass(model, data.val_loader(), cfg, data, device, tta, each=count_and_export)
    metrics, per_class = scores(cm, data.class_names)
    return {"miou": metrics["val_miou"], "pixel_acc": metrics["val_pixel_acc"], "per_class_iou": per_class,
            "majority_baseline": majority_baseline(gt_counts)}


def majority_baseline(gt_counts: torch.Tensor) -> dict:
    """mIoU / pixel accuracy of always predicting the most frequent class (context for a score).

    Its IoU is its pixel share (no false negatives); every other class present scores 0."""
    total = int(gt_counts.sum())
    share = float(gt_counts.max()) / max(total, 1)
    present = int((gt_counts > 0).sum())
    return {"miou": 100 * share / max(present, 1), "pixel_acc": 100 * share}
