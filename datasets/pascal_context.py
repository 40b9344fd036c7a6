"""Pascal-Context with the 59 most frequent classes, in the mmsegmentation layout.

Layout (root = `data.root` or `$PASCAL_CONTEXT_DATASET`; it may point at `VOC2010` itself, at its
parent, or at a folder holding `VOCdevkit/VOC2010`):
`VOC2010/JPEGImages/<id>.jpg`, `VOC2010/SegmentationClassContext/<id>.png` (as written by
mmsegmentation's `tools/dataset_converters/pascal_context.py`: 0 = background, 1..59 = classes)
and the split lists `VOC2010/ImageSets/SegmentationContext/{train,val}.txt`.
Background 0 -> 255 (ignored, the "59 classes" protocol of the papers), 1..59 -> 0..58, 255 stays
255; any other value is an error naming the file. Class names follow mmsegmentation's
`PascalContextDataset59`. The palette is the standard VOC bit-interleaved colour map (class k
gets the colour of VOC index k+1), generated here rather than copied.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import DatasetError
from .segmentation_dataset import Sample

CLASS_NAMES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
NUM_CLASSES = len(CLASS_NAMES)  # 59

TABLE = np.full(256, -1, dtype=np.int16)
TABLE[0] = 255
TABLE[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
TABLE[255] = 255
TABLES = {"Pascal-Context 59": TABLE}

LAYOUT = ("<root>/VOC2010/JPEGImages/<id>.jpg, <root>/VOC2010/SegmentationClassContext/<id>.png and "
          "<root>/VOC2010/ImageSets/SegmentationContext/{train,val}.txt")


def _voc_colormap(n: int) -> np.ndarray:
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


PALETTE = _voc_colormap(NUM_CLASSES + 1)[1:]  # (59, 3) RGB


def resolve_root(root: str | None) -> str:
    """The VOC2010 folder under `data.root` / $PASCAL_CONTEXT_DATASET; one-line error when missing."""
    root = root or os.environ.get("PASCAL_CONTEXT_DATASET")
    if not root:
        raise DatasetError(f"data.root: not set and $PASCAL_CONTEXT_DATASET is empty; expected {LAYOUT}")
    for cand in (os.path.join(root, "VOC2010"), os.path.join(root, "VOCdevkit", "VOC2010"), root):
        if os.path.isdir(os.path.join(cand, "JPEGImages")):
            return cand
    raise DatasetError(f"data.root: no Pascal-Context dataset at '{root}'; expected {LAYOUT} "
                       "(set data.root or $PASCAL_CONTEXT_DATASET)")


def find_samples(voc_root: str, split: str) -> list[Sample]:
    """Samples listed in the split file; errors on a missing/empty list or a missing file."""
    listing = os.path.join(voc_root, "ImageSets", "SegmentationContext", f"{split}.txt")
    if not os.path.isfile(listing):
        raise DatasetError(f"{listing}: split list not found; expected {LAYOUT}")
    with open(listing, encoding="utf-8") as fh:
        ids = [line.strip() for line in fh if line.strip()]
    if not ids:
        raise DatasetError(f"{listing}: split '{split}' is empty")
    samples = []
    for image_id in ids:
        image = os.path.join(voc_root, "JPEGImages", image_id + ".jpg")
        label = os.path.join(voc_root, "SegmentationClassContext", image_id + ".png")
        for path in (image, label):
            if not os.path.isfile(path):
                raise DatasetError(f"{path}: listed in {listing} but not found")
        samples.append(Sample(image, label, image_id, "Pascal-Context 59"))
    return samples
