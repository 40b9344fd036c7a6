"""Official-format Cityscapes export and label pictures (colorize / overlay).

`export_cityscapes` writes what the official evaluator (evalPixelLevelSemanticLabeling.py) and the
test server read: a single-channel 8-bit PNG per image, at the full ground-truth resolution,
holding *label ids* (train id -> label id through the official table; 255 -> 0 `unlabeled`).
The evaluator finds a prediction for `<city>_<seq>_<frame>_gtFine_labelIds.png` by matching
`<city>_<seq>_<frame>*.png` anywhere under the results folder; we use the test-server naming
`<city>_<seq>_<frame>_leftImg8bit.png`, written flat into `out_dir`.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from .cityscapes_labels import NUM_CLASSES, TRAIN_ID_TO_ID
from .errors import DatasetError


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def cityscapes_core_name(path_or_name: str) -> str:
    """`<city>_<seq>_<frame>` from a Cityscapes file path or name (e.g. a dataset item's `name`)."""
    base = os.path.basename(str(path_or_name)).split(".")[0]
    parts = base.split("_")
    if len(parts) < 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise DatasetError(f"{path_or_name}: not a Cityscapes name (<city>_<seq>_<frame>[_...])")
    return "_".join(parts[:3])


def export_cityscapes(pred_train_ids, gt_label_path_or_name: str, out_dir: str) -> str:
    """Write one prediction (H×W train ids) as an official label-id PNG; returns the path.

    When `gt_label_path_or_name` is an existing ground-truth file, the prediction must have its
    size (upsample logits to the label size before the argmax; never upscale a label map).
    """
    pred = _as_numpy(pred_train_ids)
    if pred.ndim != 2:
        raise DatasetError(f"{gt_label_path_or_name}: prediction must be H×W train ids, got shape {pred.shape}")
    pred = pred.astype(np.int64)
    bad = (pred < 0) | ((pred >= NUM_CLASSES) & (pred != 255))
    if bad.any():
        raise DatasetError(f"{gt_label_path_or_name}: prediction holds values {np.unique(pred[bad])[:5].tolist()} "
                           f"outside train ids 0..{NUM_CLASSES - 1} / 255")
    core = cityscapes_core_name(gt_label_path_or_name)
    if os.path.isfile(str(gt_label_path_or_name)):
        gt = cv2.imread(str(gt_label_path_or_name), cv2.IMREAD_UNCHANGED)
        if gt is None:
            raise DatasetError(f"{gt_label_path_or_name}: cannot read ground-truth label")
        if gt.shape[:2] != pred.shape:
            raise DatasetError(f"{gt_label_path_or_name}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH) but the "
                               f"ground truth is {gt.shape[1]}x{gt.shape[0]}; export at full resolution")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, core + "_leftImg8bit.png")
    if not cv2.imwrite(path, TRAIN_ID_TO_ID[pred.astype(np.uint8)]):
        raise DatasetError(f"{path}: could not write PNG")
    return path


def colorize(train_ids, palette) -> np.ndarray:
    """H×W class indices -> uint8 H×W×3 RGB; ignore (255) and out-of-palette values are black."""
    ids = _as_numpy(train_ids).astype(np.int64)
    pal = np.asarray(palette, dtype=np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(pal)] = pal
    return lut[np.clip(ids, 0, 255)]


def overlay(image_uint8, train_ids, palette, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised labels over an RGB image (ignore pixels keep the image); uint8 RGB."""
    img = _as_numpy(image_uint8)
    ids = _as_numpy(train_ids)
    if img.shape[:2] != ids.shape or img.ndim != 3:
        raise DatasetError(f"overlay: image shape {img.shape} does not match labels {ids.shape}")
    col = colorize(ids, palette).astype(np.float32)
    out = img.astype(np.float32)
    valid = (ids >= 0) & (ids < len(palette))
    out[valid] = (1 - alpha) * out[valid] + alpha * col[valid]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_png(path: str, array) -> str:
    """Write an RGB (H×W×3) or single-channel (H×W) uint8 array as PNG with OpenCV."""
    a = _as_numpy(array)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(a, cv2.COLOR_RGB2BGR) if a.ndim == 3 else a):
        raise DatasetError(f"{path}: could not write PNG")
    return path
