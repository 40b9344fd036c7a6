"""Evaluation-time prediction: single scale, multi-scale + flip TTA, sliding window. Plain torch.

`predict_logits` always returns softmax *probabilities* N×C×H×W at the input size (or `out_size`);
argmax is the prediction. Choices where the papers are brief:
- TTA (SpaceMeshLab: scales {0.5..1.75} + flip, "average results ... resizing to the original
  scale and flip again"): each pass's logits are softmaxed, resized bilinearly
  (align_corners=False) to the output size, un-flipped, and the probabilities averaged.
  Scaled input sizes are round(H*s) x round(W*s).
- Sliding window (mmseg "slide" mode): tiles of `crop` with `stride` (default 2/3 of the crop),
  the last tile in each direction is aligned to the image border, so no padding is ever needed
  and every tile sees real pixels; overlapping tile probabilities are averaged. A dimension
  smaller than the crop is covered by one tile of the image's own size. Only used when the
  (scaled) image is larger than the crop in some dimension.
- The caller chooses eval mode and autocast; gradients are off inside.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import DatasetError


def _forward(model: Callable, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    out = model(x)
    logits = out["out"] if isinstance(out, dict) else out
    if logits.shape[1] != num_classes:
        raise DatasetError(f"model.num_classes: model returned {logits.shape[1]} channels, expected {num_classes}")
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits.float().softmax(1)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / stride) + 1
    return sorted({min(i * stride, size - tile) for i in range(n)})


def _sliding(model, x, num_classes, crop, stride) -> torch.Tensor:
    n, _, h, w = x.shape
    th, tw = min(crop[0], h), min(crop[1], w)
    if (th, tw) == (h, w):
        return _forward(model, x, num_classes)
    sh, sw = stride if stride else (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    probs = x.new_zeros((n, num_classes, h, w), dtype=torch.float32)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    for y in _starts(h, th, sh):
        for x0 in _starts(w, tw, sw):
            probs[:, :, y:y + th, x0:x0 + tw] += _forward(model, x[:, :, y:y + th, x0:x0 + tw], num_classes)
            count[:, :, y:y + th, x0:x0 + tw] += 1
    return probs / count


def _pair(v, name) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2 or any(int(s) < 1 for s in v):
        raise DatasetError(f"{name}: expected [height, width] of positive integers, got {v!r}")
    return int(v[0]), int(v[1])


@torch.no_grad()
def predict_logits(model: Callable, image_batch: torch.Tensor, *, scales: Sequence[float] = (1.0,),
                   flip: bool = False, crop=None, stride=None, num_classes: int,
                   out_size=None) -> torch.Tensor:
    """Averaged softmax probabilities N×C×H×W (H×W = input size, or `out_size`).

    model: callable returning {"out": logits at input size, "aux": {...}} (a bare tensor works too).
    scales: TTA scales (paper: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75); flip: add horizontal flips.
    crop/stride: sliding-window tile and step (H, W) for images larger than `crop`.
    out_size: (H, W) to resize the averaged probabilities to, e.g. a full-resolution label.
    """
    if image_batch.dim() != 4:
        raise DatasetError(f"inference: expected an N×3×H×W batch, got shape {tuple(image_batch.shape)}")
    if not scales or any(s <= 0 for s in scales):
        raise DatasetError(f"eval.scales: expected positive scales, got {scales!r}")
    crop, stride = _pair(crop, "data.crop"), _pair(stride, "eval.stride")
    n, _, h, w = image_batch.shape
    size = _pair(out_size, "out_size") or (h, w)
    total = image_batch.new_zeros((n, num_classes, *size), dtype=torch.float32)
    passes = 0
    for s in scales:
        x = image_batch
        if s != 1.0:
            x = F.interpolate(image_batch, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                              align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            p = _sliding(model, xi, num_classes, crop, stride) if crop else _forward(model, xi, num_classes)
            if flipped:
                p = p.flip(-1)
            if p.shape[-2:] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            total += p
            passes += 1
    return total / passes
