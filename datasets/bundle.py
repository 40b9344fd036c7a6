"""`DataBundle` (what `datasets.build` returns) and the loader plumbing behind it.

Reproducibility: the training loader's sampler draws, in the main process, a permutation *and*
one augmentation seed per sample from the DataLoader's `generator`; the dataset derives all
randomness of a sample from that seed. So for a given generator seed (the engine seeds one per
epoch), batches are bit-identical whatever `data.workers` is. Without a generator the sampler
seeds itself from torch's global RNG (follows `torch.manual_seed`, like `RandomSampler`).
Workers set OpenCV and torch to one thread each (2-core machines, no oversubscription).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .errors import DatasetError


class SeededSampler(Sampler):
    """Yields `(index, seed)` pairs: shuffled (or in order) indices with a per-sample seed."""

    def __init__(self, length: int, generator: torch.Generator | None = None, shuffle: bool = True):
        self.length, self.generator, self.shuffle = length, generator, shuffle

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = self.generator
        if g is None:
            g = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        seeds = torch.randint(0, 2 ** 62, (self.length,), generator=g)
        yield from zip(order.tolist(), seeds.tolist())


class ShardedSeededSampler(SeededSampler):
    """Rank `rank` of `world` data-parallel workers: the r-th `global_batch // world` slice of every
    global batch of `SeededSampler`'s stream (same permutation and seeds from the same generator), so
    the ranks' step-k batches together are the single-process step-k batch. The incomplete last
    global batch is dropped, as `drop_last` does."""

    def __init__(self, length: int, generator: torch.Generator | None, shuffle: bool, rank: int, world: int,
                 global_batch: int):
        super().__init__(length, generator, shuffle)
        if global_batch % world:
            raise DatasetError(f"data.batch_size: {global_batch} is not divisible by the {world} data-parallel "
                               f"workers (resources.workers)")
        self.rank, self.world, self.global_batch = rank, world, global_batch
        self.per_rank = global_batch // world
        self.num_batches = length // global_batch

    def __len__(self) -> int:
        return self.num_batches * self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pairs = list(super().__iter__())
        for b in range(self.num_batches):
            start = b * self.global_batch + self.rank * self.per_rank
            yield from pairs[start:start + self.per_rank]


def pad_collate(items: list[dict]) -> dict:
    """Stack items; pad variable sizes (image 0 = mean colour, label 255) at the bottom/right."""
    images, labels = [it["image"] for it in items], [it["label"] for it in items]
    if len({tuple(im.shape) for im in images}) > 1 or len({tuple(lb.shape) for lb in labels}) > 1:
        if any(im.shape[-2:] != lb.shape for im, lb in zip(images, labels)):
            raise DatasetError("data.val_batch_size: images of different sizes with labels at another resolution "
                               "(data.val_full_res_labels) cannot be batched; use val_batch_size 1")
        h, w = max(im.shape[-2] for im in images), max(im.shape[-1] for im in images)
        images = [torch.nn.functional.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2]), value=0.0) for im in images]
        labels = [torch.nn.functional.pad(lb, (0, w - lb.shape[-1], 0, h - lb.shape[-2]), value=255) for lb in labels]
    # numpy stacking: torch.stack's intra-op threads cost ~50x more on a busy 2-core machine
    return {"image": torch.from_numpy(np.stack([im.numpy() for im in images])),
            "label": torch.from_numpy(np.stack([lb.numpy() for lb in labels])),
            "name": [it["name"] for it in items]}


def worker_init(_worker_id: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@dataclass
class DataBundle:
    """Train/val datasets plus everything a trainer needs to know about the label space."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    class_names: list[str]
    palette: np.ndarray                      # (num_classes, 3) uint8 RGB
    batch_size: int
    val_batch_size: int
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    ignore_index: int = 255

    def train_loader(self, batch_size: int | None = None, generator: torch.Generator | None = None,
                     shuffle: bool = True, rank: int = 0, world: int = 1, **overrides) -> DataLoader:
        """Shuffled, drop_last loader; pass a seeded `generator` per epoch for reproducible epochs.
        With `world` > 1: rank `rank`'s share of every global batch of `batch_size` (data parallel)."""
        bs = batch_size or self.batch_size
        if bs > len(self.train):
            raise DatasetError(f"data.batch_size: {bs} exceeds the {len(self.train)} training images "
                               "(drop_last would leave no batch)")
        kwargs = {**self.loader_kwargs, "drop_last": True, **overrides}
        if world > 1:
            sampler = ShardedSeededSampler(len(self.train), generator, shuffle, rank, world, bs)
            bs = sampler.per_rank
        else:
            sampler = SeededSampler(len(self.train), generator, shuffle)
        return DataLoader(self.train, batch_size=bs, sampler=sampler, collate_fn=pad_collate,
                          generator=generator, **kwargs)

    def val_loader(self, batch_size: int | None = None, rank: int = 0, world: int = 1, **overrides) -> DataLoader:
        """In-order loader over the whole val split (no drop_last), batch `data.val_batch_size`; with
        `world` > 1 rank `rank`'s contiguous shard of it (the confusion matrices are then summed)."""
        kwargs = {**self.loader_kwargs, "drop_last": False, **overrides}
        val = self.val
        if world > 1:
            bounds = np.linspace(0, len(self.val), world + 1).astype(int)
            val = Subset(self.val, list(range(bounds[rank], bounds[rank + 1])))
        return DataLoader(val, batch_size=batch_size or self.val_batch_size, shuffle=False,
                          collate_fn=pad_collate, **kwargs)
