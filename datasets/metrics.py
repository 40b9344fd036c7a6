"""Confusion-matrix metrics with the official Cityscapes definition of class IoU.

The official evaluator (cityscapesscripts/evaluation/evalPixelLevelSemanticLabeling.py) sums one
confusion matrix over the *whole* set, then per class: IoU = TP / (TP + FP + FN), where FP only
counts predictions on pixels whose ground truth is not ignored; a class whose denominator is 0
(no ground truth and never predicted) gets NaN and is left out of the average ("Score Average"
averages the non-NaN scores only). A class that is predicted but absent from the ground truth has
IoU 0 and *does* count. Dropping ignore pixels before counting (what `update` does) is exactly
that FP rule. Pixel accuracy = correct / non-ignored pixels (the evaluator leaves it off by
default; ours is the standard global definition).

Mergeable: `merge`/`+` add matrices (e.g. per-process shards); `all_reduce()` sums it over a
torch.distributed group when one is initialised.
"""

from __future__ import annotations

import math

import torch

from .errors import DatasetError


class ConfusionMatrix:
    """Rows: ground truth, columns: prediction; int64 counts on `device`."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None):
        if num_classes < 1:
            raise DatasetError(f"num_classes: expected >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "ConfusionMatrix":
        """Add a batch: `pred` N×H×W class indices or N×C×H×W scores (argmax over C); `target` N×H×W."""
        n = self.num_classes
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise DatasetError(f"metrics: prediction shape {tuple(pred.shape)} does not match label shape "
                               f"{tuple(target.shape)} (upsample logits to the label size first)")
        pred = pred.to(self.mat.device).reshape(-1).long()
        target = target.to(self.mat.device).reshape(-1).long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= n):
            raise DatasetError(f"metrics: label values outside [0, {n}) and not ignore {self.ignore_index}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= n):
            raise DatasetError(f"metrics: predicted class indices outside [0, {n})")
        self.mat += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix into this one (in place)."""
        if other.num_classes != self.num_classes:
            raise DatasetError(f"metrics: cannot merge {other.num_classes} classes into {self.num_classes}")
        self.mat += other.mat.to(self.mat.device)
        return self

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        out = ConfusionMatrix(self.num_classes, self.ignore_index, self.mat.device)
        return out.merge(self).merge(other)

    def reset(self) -> None:
        self.mat.zero_()

    def all_reduce(self, group=None) -> "ConfusionMatrix":
        """Sum over a torch.distributed group (no-op when not initialised)."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM, group=group)
        return self

    def state_dict(self) -> dict:
        return {"mat": self.mat.detach().cpu().clone(), "ignore_index": self.ignore_index}

    def load_state_dict(self, state: dict) -> None:
        mat = state["mat"]
        if tuple(mat.shape) != (self.num_classes, self.num_classes):
            raise DatasetError(f"metrics: state has shape {tuple(mat.shape)}, expected {self.num_classes}x{self.num_classes}")
        self.mat = mat.to(device=self.mat.device, dtype=torch.int64).clone()
        self.ignore_index = int(state.get("ignore_index", self.ignore_index))

    def compute(self) -> dict:
        """{"miou", "per_class_iou" (list, NaN = class absent from gt and prediction), "pixel_acc"}."""
        m = self.mat.detach().to("cpu", torch.float64)
        tp = m.diag()
        denom = m.sum(0) + m.sum(1) - tp
        iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, math.nan))
        valid = ~torch.isnan(iou)
        total = m.sum()
        return {
            "miou": float(iou[valid].mean()) if valid.any() else math.nan,
            "per_class_iou": iou.tolist(),
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        }
