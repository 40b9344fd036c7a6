"""`python -m hpo.evaluate CONFIG.yaml --checkpoint CKPT [--tta] [--export-dir DIR]`

Evaluates a checkpoint on the config's val split: mIoU and per-class IoU, single-scale or with
multi-scale + flip TTA (`eval.scales`), sliding window when `eval.sliding` is on. With
`--export-dir` it writes predictions in the official Cityscapes evaluator's format (label-id
PNGs named after the ground truth) under `DIR/labelIds/` and colour overlays under `DIR/overlays/`;
for a folder dataset (`folder`, `camvid`) and Pascal-Context the predictions are class-index PNGs
(the order of the dataset's classes) under `DIR/labels/`. Per-class IoU and overlays use the
dataset's class names and palette.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m hpo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (last.pt) or a model state_dict")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--export-dir", help="write official-format label-id PNGs and overlays here")
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(cfg: dict, checkpoint: str, tta: bool = False, export_dir: str | None = None) -> dict:
    import datasets
    from datasets.export import export_cityscapes, overlay, save_png
    from datasets.metrics import ConfusionMatrix
    from datasets.transforms import denormalize
    from hpo.training.trainer import load_model_weights, predict, resolve_device
    from models import build_model

    device = resolve_device(cfg)
    data = datasets.build(cfg)
    model = build_model(cfg).to(device).eval()
    load_model_weights(model, checkpoint)
    cm = ConfusionMatrix(data.num_classes, ignore_index=data.ignore_index, device=device)
    out = Path(export_dir) if export_dir else None
    gt_counts = torch.zeros(data.num_classes, dtype=torch.int64)
    for batch in data.val_loader():
        valid = batch["label"][batch["label"] != data.ignore_index]
        gt_counts += torch.bincount(valid.flatten(), minlength=data.num_classes)
        image, label = batch["image"].to(device), batch["label"].to(device)
        pred = predict(model, image, tuple(label.shape[-2:]), cfg, data.num_classes, tta)
        cm.update(pred, label)
        if out is not None:
            for i, name in enumerate(batch["name"]):
                p = pred[i].cpu().numpy().astype(np.uint8)
                if data.name in ("cityscapes", "synthetic"):
                    export_cityscapes(p, name, out / "labelIds")
                else:                       # class indices, named after the image
                    save_png(str(out / "labels" / f"{name}.png"), p)
                pic = overlay(denormalize(batch["image"][i]), p, data.palette)
                (out / "overlays").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out / "overlays" / (Path(name).stem + ".png")), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    res = cm.compute()
    return {"miou": float(res["miou"]) * 100, "pixel_acc": float(res["pixel_acc"]) * 100,
            "per_class_iou": {n: float(v) * 100 for n, v in zip(data.class_names, res["per_class_iou"])},
            "majority_baseline": majority_baseline(gt_counts)}


def majority_baseline(gt_counts: torch.Tensor) -> dict:
    """mIoU / pixel accuracy of always predicting the most frequent class (context for a score).

    Its IoU is its pixel share (no false negatives); every other class present scores 0."""
    total = int(gt_counts.sum())
    share = float(gt_counts.max()) / max(total, 1)
    present = int((gt_counts > 0).sum())
    return {"miou": 100 * share / max(present, 1), "pixel_acc": 100 * share}


def main(argv=None) -> int:
    from hpo.config import load_run_config
    from hpo.training.outputs import per_class_lines

    args = parse_args(argv)
    try:
        cfg = load_run_config(args.config)
        res = evaluate(cfg, args.checkpoint, tta=args.tta, export_dir=args.export_dir)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    base = res["majority_baseline"]
    print(f"mIoU {res['miou']:.2f}  pixel acc {res['pixel_acc']:.2f}{'  (TTA)' if args.tta else ''}   "
          f"[always predicting the majority class: mIoU {base['miou']:.2f}, pixel acc {base['pixel_acc']:.2f}]")
    print(per_class_lines(res["per_class_iou"]))
    if args.export_dir:
        labels = "labelIds" if cfg["data"]["name"] in ("cityscapes", "synthetic") else "labels"
        print(f"predictions written to {args.export_dir}/{labels} and {args.export_dir}/overlays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
