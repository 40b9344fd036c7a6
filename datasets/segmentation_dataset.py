"""A torch Dataset over (image file, label file) pairs with a label lookup table and a transform.

Shared by Cityscapes, the synthetic set (Cityscapes layout) and Pascal-Context. Files are read
with OpenCV; every failure names the file. An item is
`{"image": float32 3xHxW, "label": int64 HxW (train ids, 255 ignore), "name": str}`.

Reproducibility: an index may be an `int` or an `(int, seed)` pair. The training sampler in
`bundle.py` draws one seed per sample in the main process from the DataLoader's generator, so
the augmentation of every sample depends only on that generator -- not on `data.workers`, worker
scheduling or prefetching. A plain int index uses the seed `(dataset seed, index)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError


@dataclass(frozen=True)
class Sample:
    image: str      # path of the RGB image
    label: str      # path of the single-channel label PNG
    name: str       # identifies the source file (export naming), e.g. "frankfurt_000000_000294"
    table: str      # which lookup table applies, a key of the dataset's `tables`


def read_image(path: str) -> np.ndarray:
    """uint8 HxWx3 RGB; DatasetError naming the file when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{path}: cannot decode image (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str, table: np.ndarray, table_name: str) -> np.ndarray:
    """Single-channel label PNG mapped through `table` (-1 = invalid value) -> uint8 HxW."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: label file not found")
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"{path}: cannot decode label image (corrupt or not an image)")
    if raw.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel label PNG, got shape {raw.shape}")
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            bad = np.unique(raw[(raw < 0) | (raw > 255)])[:5].tolist()
            raise DatasetError(f"{path}: label values {bad} are not in the {table_name} table")
        raw = raw.astype(np.uint8)
    mapped = table[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])[:5].tolist()
        raise DatasetError(f"{path}: label values {bad} are not in the {table_name} table")
    return mapped.astype(np.uint8)


class SegmentationDataset(Dataset):
    """Reads, maps, validates and transforms one split's samples."""

    def __init__(self, samples: list[Sample], tables: dict[str, np.ndarray],
                 transform: Callable, *, seed: int = 0, description: str = ""):
        self.samples = list(samples)
        self.tables = tables
        self.transform = transform
        self.seed = int(seed)
        self.description = description

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.description!r}, {len(self)} samples)"

    def read_label(self, sample: Sample) -> np.ndarray:
        """uint8 train-id label of one sample (the folder dataset decodes its own way)."""
        return read_label(sample.label, self.tables[sample.table], sample.table)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed (uint8 RGB image, uint8 train-id label) of one sample."""
        s = self.samples[index]
        image = read_image(s.image)
        label = self.read_label(s)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{s.label}: label size {label.shape[1]}x{label.shape[0]} (WxH) does not match "
                               f"image {s.image} size {image.shape[1]}x{image.shape[0]}")
        return image, label

    def __getitem__(self, key) -> dict:
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
            rng = np.random.default_rng(seed)
        else:
            index = int(key)
            rng = np.random.default_rng([self.seed, index])
        image, label = self.load(index)
        image, label = self.transform(image, label, rng)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label),
                "name": self.samples[index].name}
