"""`build(cfg) -> DataBundle`: the one entry point the trainer uses.

`data.name`:
- `synthetic`: the Cityscapes loader on a generated tree at `data.root`. `build` never generates
  silently: a missing/empty root is a one-line error with the generator command; callers that
  want generation call `datasets.synthetic.ensure(root, **data.generate)` first. When
  `data.generate` is set and the tree records other parameters, that is an error too.
- `cityscapes`: `data.root` or `$CITYSCAPES_DATASET`.
- `pascal_context`: `data.root` or `$PASCAL_CONTEXT_DATASET` (59 classes).
- `folder`: any layout described by `data.folder` (classes, palette, label map; datasets/folder.py).
- `camvid`: the folder dataset with CamVid's SegNet layout; `data.root` or `$CAMVID_DATASET`.
The augmentation seed is the run config's top-level `seed`.
"""

from __future__ import annotations

import numpy as np
import torch

from . import cityscapes, cityscapes_labels, folder, pascal_context
from .bundle import DataBundle, worker_init
from .config import parse_data_config
from .errors import DatasetError
from .segmentation_dataset import SegmentationDataset
from .transforms import TrainTransform, ValTransform


def _loader_kwargs(workers: int) -> dict:
    kw = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    if workers > 0:
        kw.update(persistent_workers=True, worker_init_fn=worker_init)
    return kw


def label_space(cfg: dict) -> tuple[list[str], np.ndarray]:
    """(class names in label order, (num_classes, 3) uint8 RGB palette) of the run config's dataset,
    without reading any file: what reports and pictures name and colour classes by."""
    dc = parse_data_config(cfg)
    if dc.name in folder.NAMES:
        fc = dc.folder
        palette = np.asarray(fc.palette, np.uint8) if fc.palette is not None else folder.default_palette(len(fc.classes))
        return list(fc.classes), palette
    if dc.name == "pascal_context":
        return list(pascal_context.CLASS_NAMES), pascal_context.PALETTE
    return list(cityscapes_labels.CLASS_NAMES), cityscapes_labels.PALETTE


def build(cfg: dict) -> DataBundle:
    """Datasets, label space and loader settings for the run config `cfg` (section `data`)."""
    dc = parse_data_config(cfg)
    train_tf = TrainTransform(crop=dc.crop, resize=dc.resize, scale=dc.scale, crop_mode=dc.crop_mode, flip=dc.flip,
                              jitter=dc.jitter, max_class_ratio=dc.max_class_ratio)
    val_tf = ValTransform(resize=dc.resize, size_divisor=dc.size_divisor, full_res_labels=dc.val_full_res_labels)
    if dc.name in folder.NAMES:
        res = folder.resolve(dc.name, dc.root, dc.folder)
        train, val = (folder.FolderDataset(folder.find_samples(res.root, dc.folder, split), res.decoder, tf,
                                           seed=dc.seed, description=f"{dc.name} {split} @ {res.root}")
                      for split, tf in (("train", train_tf), ("val", val_tf)))
        return DataBundle(name=dc.name, train=train, val=val, num_classes=len(dc.folder.classes),
                          class_names=list(dc.folder.classes), palette=res.palette, batch_size=dc.batch_size,
                          val_batch_size=dc.val_batch_size, loader_kwargs=_loader_kwargs(dc.workers))
    if dc.name == "pascal_context":
        root = pascal_context.resolve_root(dc.root)
        find, tables = pascal_context.find_samples, pascal_context.TABLES
        names, palette = list(pascal_context.CLASS_NAMES), pascal_context.PALETTE
    else:
        if dc.name == "synthetic":
            from . import synthetic   # lazy: keeps `python -m datasets.synthetic` free of runpy warnings
            root = dc.root or synthetic.DEFAULTS_ROOT
            if not synthetic.is_populated(root):
                raise DatasetError(synthetic.missing_root_message(root, dc.generate))
            if dc.generate is not None:
                synthetic.check_marker(root, dc.generate)
        else:
            root = cityscapes.resolve_root(dc.root)
        find, tables = cityscapes.find_samples, cityscapes.TABLES
        names, palette = list(cityscapes_labels.CLASS_NAMES), cityscapes_labels.PALETTE

    train = SegmentationDataset(find(root, "train"), tables, train_tf, seed=dc.seed,
                                description=f"{dc.name} train @ {root}")
    val = SegmentationDataset(find(root, "val"), tables, val_tf, seed=dc.seed, description=f"{dc.name} val @ {root}")
    return DataBundle(name=dc.name, train=train, val=val, num_classes=len(names), class_names=names,
                      palette=palette, batch_size=dc.batch_size, val_batch_size=dc.val_batch_size,
                      loader_kwargs=_loader_kwargs(dc.workers))
