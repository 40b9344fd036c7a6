"""The official Cityscapes label table and the lookups derived from it.

Copied in content (not code) from `cityscapesscripts/helpers/labels.py` of the official
repository (mcordts/cityscapesScripts): 34 labels with ids 0..33 plus `license plate` (id -1).
Only the 19 labels with a train id 0..18 are evaluated; every other id maps to 255 (ignore).
Newer forks add lane-line labels (ids 34..45); the official benchmark does not know them, so
they are treated as invalid here like any other unknown id.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_INDEX = 255


class Label(NamedTuple):
    name: str
    id: int             # value in *_gtFine_labelIds.png; what the evaluation server expects
    train_id: int       # 0..18 evaluated classes, 255 ignored
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]  # RGB


LABELS: tuple[Label, ...] = (
    #     name                    id  trainId  category       catId  instances ignore  color
    Label("unlabeled",             0, 255, "void",           0, False, True,  (0, 0, 0)),
    Label("ego vehicle",           1, 255, "void",           0, False, True,  (0, 0, 0)),
    Label("rectification border",  2, 255, "void",           0, False, True,  (0, 0, 0)),
    Label("out of roi",            3, 255, "void",           0, False, True,  (0, 0, 0)),
    Label("static",                4, 255, "void",           0, False, True,  (0, 0, 0)),
    Label("dynamic",               5, 255, "void",           0, False, True,  (111, 74, 0)),
    Label("ground",                6, 255, "void",           0, False, True,  (81, 0, 81)),
    Label("road",                  7,   0, "flat",           1, False, False, (128, 64, 128)),
    Label("sidewalk",              8,   1, "flat",           1, False, False, (244, 35, 232)),
    Label("parking",               9, 255, "flat",           1, False, True,  (250, 170, 160)),
    Label("rail track",           10, 255, "flat",           1, False, True,  (230, 150, 140)),
    Label("building",             11,   2, "construction",   2, False, False, (70, 70, 70)),
    Label("wall",                 12,   3, "construction",   2, False, False, (102, 102, 156)),
    Label("fence",                13,   4, "construction",   2, False, False, (190, 153, 153)),
    Label("guard rail",           14, 255, "construction",   2, False, True,  (180, 165, 180)),
    Label("bridge",               15, 255, "construction",   2, False, True,  (150, 100, 100)),
    Label("tunnel",               16, 255, "construction",   2, False, True,  (150, 120, 90)),
    Label("pole",                 17,   5, "object",         3, False, False, (153, 153, 153)),
    Label("polegroup",            18, 255, "object",         3, False, True,  (153, 153, 153)),
    Label("traffic light",        19,   6, "object",         3, False, False, (250, 170, 30)),
    Label("traffic sign",         20,   7, "object",         3, False, False, (220, 220, 0)),
    Label("vegetation",           21,   8, "nature",         4, False, False, (107, 142, 35)),
    Label("terrain",              22,   9, "nature",         4, False, False, (152, 251, 152)),
    Label("sky",                  23,  10, "sky",            5, False, False, (70, 130, 180)),
    Label("person",               24,  11, "human",          6, True,  False, (220, 20, 60)),
    Label("rider",                25,  12, "human",          6, True,  False, (255, 0, 0)),
    Label("car",                  26,  13, "vehicle",        7, True,  False, (0, 0, 142)),
    Label("truck",                27,  14, "vehicle",        7, True,  False, (0, 0, 70)),
    Label("bus",                  28,  15, "vehicle",        7, True,  False, (0, 60, 100)),
    Label("caravan",              29, 255, "vehicle",        7, True,  True,  (0, 0, 90)),
    Label("trailer",              30, 255, "vehicle",        7, True,  True,  (0, 0, 110)),
    Label("train",                31,  16, "vehicle",        7, True,  False, (0, 80, 100)),
    Label("motorcycle",           32,  17, "vehicle",        7, True,  False, (0, 0, 230)),
    Label("bicycle",              33,  18, "vehicle",        7, True,  False, (119, 11, 32)),
    Label("license plate",        -1,  -1, "vehicle",        7, False, True,  (0, 0, 142)),
)

NAME_TO_LABEL = {lab.name: lab for lab in LABELS}
ID_TO_LABEL = {lab.id: lab for lab in LABELS}

# The 19 evaluated classes in train-id order.
TRAIN_LABELS: tuple[Label, ...] = tuple(sorted((lab for lab in LABELS if 0 <= lab.train_id < 255),
                                               key=lambda lab: lab.train_id))
NUM_CLASSES = len(TRAIN_LABELS)  # 19
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in TRAIN_LABELS)
PALETTE = np.array([lab.color for lab in TRAIN_LABELS], dtype=np.uint8)  # (19, 3) RGB

# Lookup tables over uint8 pixel values; -1 marks a value that is not a valid label (-> error).
ID_TO_TRAIN_ID = np.full(256, -1, dtype=np.int16)
for _lab in LABELS:
    if _lab.id >= 0:
        ID_TO_TRAIN_ID[_lab.id] = _lab.train_id

# For *_gtFine_labelTrainIds.png files: 0..18 and 255 are the only valid values.
TRAIN_ID_IDENTITY = np.full(256, -1, dtype=np.int16)
TRAIN_ID_IDENTITY[:NUM_CLASSES] = np.arange(NUM_CLASSES)
TRAIN_ID_IDENTITY[IGNORE_INDEX] = IGNORE_INDEX

# Inverse for export: train id -> label id. Like the official `trainId2label` the first label in
# the table wins (irrelevant for 0..18, which are unique); 255 (ignore) becomes 0 `unlabeled`.
TRAIN_ID_TO_ID = np.zeros(256, dtype=np.uint8)
for _lab in reversed(TRAIN_LABELS):
    TRAIN_ID_TO_ID[_lab.train_id] = _lab.id


def label_id_to_train_id(label_id: int) -> int:
    """Train id of one Cityscapes label id (-1..33); raises KeyError for unknown ids."""
    return ID_TO_LABEL[label_id].train_id
