"""Cityscapes (fine annotations) in the official layout, also used for the synthetic set.

Layout: `<root>/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png` and
`<root>/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png`. When a
`..._gtFine_labelTrainIds.png` (written by cityscapesscripts' createTrainIdLabelImgs) sits next to
it, that file is used instead (no lookup needed, values 0..18/255). Label ids map to the 19 train
ids through the official table in `cityscapes_labels.py`; any value outside the table is an error
naming the file. The root comes from `data.root`, else `$CITYSCAPES_DATASET`.
"""

from __future__ import annotations

import glob
import os

from .cityscapes_labels import ID_TO_TRAIN_ID, TRAIN_ID_IDENTITY
from .errors import DatasetError
from .segmentation_dataset import Sample

LAYOUT = ("<root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
          "<root>/gtFine/{train,val}/<city>/*_gtFine_labelIds.png")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
TABLES = {"Cityscapes labelIds": ID_TO_TRAIN_ID, "Cityscapes labelTrainIds": TRAIN_ID_IDENTITY}
GENERATOR_HINT = ("or use the synthetic stand-in: python -m datasets.synthetic --out data/synthetic "
                  "and data.name: synthetic")


def resolve_root(root: str | None) -> str:
    """`data.root`, else $CITYSCAPES_DATASET; raises the one-line layout error when missing."""
    root = root or os.environ.get("CITYSCAPES_DATASET")
    if not root:
        raise DatasetError(f"data.root: not set and $CITYSCAPES_DATASET is empty; expected {LAYOUT} "
                           f"({GENERATOR_HINT})")
    if not os.path.isdir(os.path.join(root, "leftImg8bit")):
        raise DatasetError(f"data.root: no Cityscapes dataset at '{root}'; expected {LAYOUT} "
                           f"(set data.root or $CITYSCAPES_DATASET, {GENERATOR_HINT})")
    return root


def find_samples(root: str, split: str) -> list[Sample]:
    """All (image, label) pairs of one split, sorted by name; errors on an empty split or a missing label."""
    pattern = os.path.join(root, "leftImg8bit", split, "*", "*" + IMAGE_SUFFIX)
    images = sorted(glob.glob(pattern))
    if not images:
        raise DatasetError(f"data.root: split '{split}' is empty: no files match {pattern}")
    samples = []
    for image in images:
        city = os.path.basename(os.path.dirname(image))
        core = os.path.basename(image)[: -len(IMAGE_SUFFIX)]
        label_dir = os.path.join(root, "gtFine", split, city)
        train_ids = os.path.join(label_dir, core + TRAIN_ID_SUFFIX)
        label_ids = os.path.join(label_dir, core + LABEL_ID_SUFFIX)
        if os.path.isfile(train_ids):
            samples.append(Sample(image, train_ids, core, "Cityscapes labelTrainIds"))
        elif os.path.isfile(label_ids):
            samples.append(Sample(image, label_ids, core, "Cityscapes labelIds"))
        else:
            raise DatasetError(f"{label_ids}: label file not found for image {image}")
    return samples
