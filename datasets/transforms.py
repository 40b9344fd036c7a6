"""OpenCV/NumPy transforms for (image, label) pairs: train augmentation and val preprocessing.

Train: resize -> random scale -> crop -> flip -> photometric jitter -> normalise -> pad.
Val:   resize -> (optional) floor to a multiple of `size_divisor` -> normalise.

Choices where the papers are silent or differ (all documented in docs/datasets.md):
- `resize` and the random scale are folded into one `cv2.resize` from the source image (same
  geometry as two resizes, one interpolation instead of two). Images: bilinear; labels: nearest.
- Crop: `crop_mode: random` (mmseg RandomCrop, optionally re-drawn up to 10 times while one class
  covers >= `max_class_ratio` of the non-ignored crop pixels, mmseg's `cat_max_ratio`) or
  `center` (msglore: "resized to 512x1024 ... cropped it at the center ... 512x512").
- Padding when the scaled image is smaller than the crop happens *after* normalisation with 0,
  i.e. the ImageNet mean colour (mmseg's Pad-after-Normalize); labels are padded with 255.
- Jitter follows mmseg's PhotoMetricDistortion (each with p=0.5: brightness +-32, contrast
  0.5-1.5, saturation 0.5-1.5, hue +-18 OpenCV units); contrast always before the HSV part.
- Normalisation: RGB, ImageNet mean/std on the 0-255 scale; outputs float32 CHW.
All randomness comes from the `rng` argument, so a sample is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .cityscapes_labels import IGNORE_INDEX

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB, 0..255
IMAGENET_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

CROP_RETRIES = 10  # mmseg's cat_max_ratio retry count


def normalize(image_rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 3xHxW, ImageNet-normalised."""
    out = (image_rgb.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def denormalize(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Inverse of `normalize` for one image (3xHxW) -> uint8 HxWx3 RGB (for pictures/overlays)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    rgb = image.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def resize_pair(image: np.ndarray, label: np.ndarray | None, size_hw: tuple[int, int]):
    """Resize image bilinearly and label with nearest neighbour to (H, W)."""
    h, w = size_hw
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if label is not None and label.shape[:2] != (h, w):
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg-style PhotoMetricDistortion on uint8 RGB; returns uint8 RGB."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-32, 32)
    if rng.random() < 0.5:
        img *= rng.uniform(0.5, 1.5)
    img = np.clip(img, 0, 255)
    do_sat, do_hue = rng.random() < 0.5, rng.random() < 0.5
    sat, hue = rng.uniform(0.5, 1.5), rng.uniform(-18, 18)
    if do_sat or do_hue:
        # float32 HSV: H in [0, 360), S in [0, 1]; OpenCV hue units are degrees / 2.
        hsv = cv2.cvtColor(img / 255.0, cv2.COLOR_RGB2HSV)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 1)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + 2 * hue) % 360
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _crop_window(h: int, w: int, crop: tuple[int, int], mode: str, rng: np.random.Generator):
    ch, cw = crop
    mh, mw = max(h - ch, 0), max(w - cw, 0)
    if mode == "center":
        y, x = mh // 2, mw // 2
    else:
        y, x = int(rng.integers(0, mh + 1)), int(rng.integers(0, mw + 1))
    return y, x, min(ch, h), min(cw, w)


def _dominated(label: np.ndarray, max_ratio: float, ignore_index: int) -> bool:
    counts = np.bincount(label.ravel(), minlength=256)
    counts[ignore_index] = 0
    total = counts.sum()
    return not (np.count_nonzero(counts) > 1 and counts.max() / total < max_ratio)


@dataclass(frozen=True)
class TrainTransform:
    crop: tuple[int, int] | None = (512, 512)
    resize: tuple[int, int] | None = None
    scale: tuple[float, float] | None = (0.5, 2.0)
    crop_mode: str = "random"
    flip: bool = True
    jitter: bool = True
    max_class_ratio: float = 1.0
    ignore_index: int = IGNORE_INDEX

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        """uint8 RGB HxWx3 + uint8 train-id HxW -> (float32 3xhxw, int64 hxw)."""
        h, w = self.resize if self.resize else image.shape[:2]
        if self.scale:
            s = rng.uniform(*self.scale)
            h, w = max(1, round(h * s)), max(1, round(w * s))
        image, label = resize_pair(image, label, (h, w))

        if self.crop:
            y, x, ch, cw = _crop_window(h, w, self.crop, self.crop_mode, rng)
            if self.max_class_ratio < 1.0 and self.crop_mode == "random":
                for _ in range(CROP_RETRIES - 1):
                    if not _dominated(label[y:y + ch, x:x + cw], self.max_class_ratio, self.ignore_index):
                        break
                    y, x, ch, cw = _crop_window(h, w, self.crop, self.crop_mode, rng)
            image, label = image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]

        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image = np.ascontiguousarray(image)
        if self.jitter:
            image = photometric_jitter(image, rng)
        out = normalize(image)
        lab = label.astype(np.int64)

        if self.crop and out.shape[1:] != tuple(self.crop):
            ch, cw = self.crop
            ph, pw = max(ch - out.shape[1], 0), max(cw - out.shape[2], 0)
            out = np.pad(out, ((0, 0), (0, ph), (0, pw)), constant_values=0.0)
            lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=self.ignore_index)
        return out, lab


@dataclass(frozen=True)
class ValTransform:
    resize: tuple[int, int] | None = None
    size_divisor: int | None = None
    full_res_labels: bool = False   # keep the label at its source size (score at full resolution)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None):
        h, w = self.resize if self.resize else image.shape[:2]
        if self.size_divisor:
            # SpaceMeshLab on Pascal-Context: (floor(H/16)*16, floor(W/16)*16).
            d = self.size_divisor
            h, w = max(d, h // d * d), max(d, w // d * d)
        image, resized_label = resize_pair(image, None if self.full_res_labels else label, (h, w))
        lab = label if self.full_res_labels else resized_label
        return normalize(image), lab.astype(np.int64)
