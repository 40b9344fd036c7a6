"""Checks of a run config's data before any training: a sample, not a scan.

`check_sample(cfg)` builds the train and val datasets the trainer would build (missing roots, splits
and files are the builders' own one-line errors), decodes an evenly spaced sample of images and label
maps from each split (a corrupt file is named), and checks the decoded labels against the model:
`model.num_classes` must equal the dataset's class count, and every label value must be a class
index or the ignore value. It returns one line saying what it checked. Seconds, whatever the
dataset's size: the point is to fail before the first trial, not to certify every file (a file the
sample missed still fails its own trial with one line naming it).
"""

from __future__ import annotations

import numpy as np

from .errors import DatasetError


def check_sample(cfg: dict, per_split: int = 8) -> str:
    from .build import build

    bundle = build(cfg)
    declared = (cfg.get("model") or {}).get("num_classes")
    if declared is not None and int(declared) != bundle.num_classes:
        raise DatasetError(f"model.num_classes: {declared}, but {bundle.name} data has {bundle.num_classes} "
                           f"classes ({', '.join(bundle.class_names[:4])}{', ...' if bundle.num_classes > 4 else ''})")
    checked = 0
    for split, ds in (("train", bundle.train), ("val", bundle.val)):
        if len(ds) == 0:
            raise DatasetError(f"{bundle.name} {split}: no samples found")
        for index in np.unique(np.linspace(0, len(ds) - 1, min(per_split, len(ds))).astype(int)):
            _, label = ds.load(int(index))
            values = np.unique(label)
            bad = values[(values >= bundle.num_classes) & (values != bundle.ignore_index)]
            if bad.size:
                raise DatasetError(f"{ds.samples[index].label}: label values {bad.tolist()} are outside the "
                                   f"{bundle.num_classes} classes and the ignore value {bundle.ignore_index}")
            checked += 1
    return (f"data: {bundle.name}, {len(bundle.train)} train / {len(bundle.val)} val images, {bundle.num_classes} "
            f"classes; decoded {checked} images and label maps, labels within model.num_classes")
