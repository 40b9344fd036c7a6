"""Any segmentation dataset on disk (`data.name: folder`), and CamVid as one (`data.name: camvid`).

The mmsegmentation convention: images and label maps in sibling folders with matching file names,
suffixes, the class names in label order and an optional palette, all in the run config:

    data:
      name: folder
      root: /data/mine                       # required for `folder`
      folder:
        train: {images: images/train, labels: labels/train}   # the default layout
        val:   {list: val.txt}               # or a list file: "image label" pairs, or stems
        image_suffix: .png                   # default .png (both)
        label_suffix: .png
        classes: [sky, road, car]            # names in label order (required)
        palette: [[128,128,128], [128,64,128], [64,0,128]]   # optional: overlays, colour label maps
        ignore_index: 255                    # the raw label value that is not scored (null: none)
        label_map: {11: ignore}              # raw value -> class index or ignore

Label maps are single-channel 8- or 16-bit PNGs holding class indices, or colour PNGs decoded
through the palette (a pixel of colour `palette[i]` is class i). Decoding of one raw value:
its `label_map` entry if any, else ignore when it equals `ignore_index`, else itself when it is a
class index (< number of classes); anything else is an error naming the file. `label_map` keys:
a value (`11: ignore`), an inclusive range mapped onto consecutive classes from the given index
(`1..59: 0` is "shift the rest down by one"), or, for colour label maps, a colour `"r,g,b"`
(`"0,0,0": ignore`). So CamVid's "11 = void" is `{11: ignore}` and Pascal-Context's "0 =
background, shift the rest" is `{0: ignore, 1..59: 0}`.

`preflight(cfg)` runs the file checks before any training (the search and `hpo.train` call it
before Ray or the trainer start): missing root/split folders or list files, images without a label
(with the count), label values outside the declared classes on a sample of files. The config-only
checks (schema, `model.num_classes` equal to the number of classes) run in `parse_data_config`.
During training a file that cannot be decoded raises one `DatasetError` naming the file.

`camvid`: the SegNet distribution's layout (`train/` + `trainannot/`, `val/` + `valannot/`, the
same pairs as `train.txt` / `val.txt`), its 11 classes, 11 = void, and the SegNet tutorial's
palette; root from `data.root` or `$CAMVID_DATASET`. `data.folder` keys given with `camvid`
override the preset's.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import DatasetError
from .segmentation_dataset import Sample, SegmentationDataset, read_image

NAMES = ("folder", "camvid")
IGNORE = 255                      # the ignore value of decoded labels (the loss and metrics use it)
CHECK_FILES = 16                  # label files per split whose values preflight reads
DEFAULT_SPLIT = {"images": "images/{split}", "labels": "labels/{split}"}

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
# The SegNet tutorial's colours (Scripts/ of alexgkendall/SegNet-Tutorial); void (11) is black.
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
CAMVID = {
    "train": {"images": "train", "labels": "trainannot"},
    "val": {"images": "val", "labels": "valannot"},
    "image_suffix": ".png", "label_suffix": ".png",
    "classes": list(CAMVID_CLASSES), "palette": [list(c) for c in CAMVID_PALETTE],
    "ignore_index": 255, "label_map": {11: "ignore"},
}
CAMVID_LAYOUT = "<root>/train/*.png + <root>/trainannot/*.png, <root>/val/*.png + <root>/valannot/*.png"

_CLASS_NAME = re.compile(r"^[A-Za-z0-9_.\- ]+$")      # what MLflow accepts in a metric name iou_<class>
_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")
_COLOUR = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")


# --- schema ------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SplitLayout(_Strict):
    images: str | None = None          # folder of images, relative to the root (or absolute)
    labels: str | None = None          # folder of label maps
    list_file: str | None = Field(None, alias="list")   # "image label" pairs or stems, one a line


class FolderConfig(_Strict):
    train: SplitLayout = SplitLayout()
    val: SplitLayout = SplitLayout()
    image_suffix: str = Field(".png", min_length=1)
    label_suffix: str = Field(".png", min_length=1)
    classes: list[str] = Field(min_length=1, max_length=255)
    palette: list[list[int]] | None = None
    ignore_index: int | None = Field(255, ge=0, le=65535)
    label_map: dict[int | str, Any] = {}

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if not _CLASS_NAME.match(name):
                raise ValueError(f"class {i} {name!r}: use letters, digits, spaces, '_', '-' or '.' "
                                 "(it names the metric iou_<class>)")
        dup = sorted({n for n in v if v.count(n) > 1})
        if dup:
            raise ValueError(f"class names must be unique, {dup[0]!r} repeats")
        return v

    @field_validator("palette")
    @classmethod
    def _palette(cls, v):
        if v is None:
            return v
        for i, c in enumerate(v):
            if len(c) != 3 or not all(0 <= x <= 255 for x in c):
                raise ValueError(f"colour {i} {list(c)}: expected [r, g, b] in 0..255")
        if len({tuple(c) for c in v}) != len(v):
            raise ValueError("colours must be distinct (colour label maps are decoded through them)")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        n = len(self.classes)
        if self.palette is not None and len(self.palette) != n:
            raise ValueError(f"palette: {len(self.palette)} colours for {n} classes")
        for key, target in self.label_map.items():
            lo, hi, _ = parse_map_key(key)
            if target != "ignore" and (not isinstance(target, int) or isinstance(target, bool)):
                raise ValueError(f"label_map.{key}: expected a class index or ignore, got {target!r}")
            if target != "ignore" and not (0 <= target and target + (hi - lo) < n):
                what = f"{lo}..{hi} -> {target}..{target + hi - lo}" if hi > lo else f"-> {target}"
                raise ValueError(f"label_map.{key}: {what} is not a class index 0..{n - 1} or ignore")
        return self


def parse_map_key(key: int | str) -> tuple[int, int, bool]:
    """`label_map` key -> (low, high, is_colour): a value, a range `lo..hi`, or a colour `r,g,b`
    (packed as r<<16 | g<<8 | b). JSON round trips turn int keys into strings: both are accepted."""
    if isinstance(key, int) and not isinstance(key, bool):
        value = key
    elif isinstance(key, str) and key.strip().isdigit():
        value = int(key)
    elif isinstance(key, str) and _RANGE.match(key):
        lo, hi = (int(x) for x in _RANGE.match(key).groups())
        if lo > hi or hi > 65535:
            raise ValueError(f"label_map.{key}: expected a range lo..hi with lo <= hi <= 65535")
        return lo, hi, False
    elif isinstance(key, str) and _COLOUR.match(key):
        rgb = [int(x) for x in _COLOUR.match(key).groups()]
        if not all(0 <= x <= 255 for x in rgb):
            raise ValueError(f"label_map.{key}: expected a colour r,g,b in 0..255")
        packed = rgb[0] << 16 | rgb[1] << 8 | rgb[2]
        return packed, packed, True
    else:
        raise ValueError(f"label_map.{key}: expected a label value, a range lo..hi or a colour r,g,b")
    if not 0 <= value <= 65535:
        raise ValueError(f"label_map.{key}: expected a label value in 0..65535")
    return value, value, False


def _error_line(err: ValidationError, prefix: str) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith(("function-", "tuple[", "int", "str", "literal"))]
    key = ".".join([prefix, *loc])
    msg = first["msg"].removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if not loc and sep and " " not in head:     # a whole-section check names its own key ("palette: ...")
        key, msg = f"{prefix}.{head}", rest
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if first["type"] == "missing":
        return f"{key}: required key is missing"
    if first["type"] != "value_error":
        msg += f" (got {first.get('input')!r})"
    return f"{key}: {msg}"


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "label_map" \
            else copy.deepcopy(v)
    return out


def parse_folder_config(name: str, folder: Any, num_classes: Any = None) -> FolderConfig:
    """`data.folder` of a `folder` / `camvid` run config, validated (camvid: over its preset). With
    `num_classes` (the config's `model.num_classes`), it must equal the number of classes."""
    if folder is not None and not isinstance(folder, dict):
        raise DatasetError(f"data.folder: expected a mapping, got {folder!r}")
    if name == "folder" and folder is None:
        raise DatasetError("data.folder: required with data.name: folder (classes, and the split folders "
                           "or list files; see docs/datasets.md)")
    raw = _merge(CAMVID, folder or {}) if name == "camvid" else folder
    try:
        fc = FolderConfig.model_validate(raw)
    except ValidationError as err:
        raise DatasetError(_error_line(err, "data.folder")) from None
    if num_classes is not None and num_classes != len(fc.classes):
        where = "data.folder.classes" if name == "folder" else "the camvid preset"
        raise DatasetError(f"model.num_classes: {num_classes}, but {where} declares {len(fc.classes)} classes "
                           f"({', '.join(fc.classes[:4])}{', ...' if len(fc.classes) > 4 else ''})")
    return fc


def default_palette(n: int) -> np.ndarray:
    """Distinct colours for n classes when no palette is given (the VOC colour map, black skipped)."""
    from .pascal_context import _voc_colormap

    return _voc_colormap(n + 1)[1:]


# --- label decoding ----------------------------------------------------------------------------
class LabelDecoder:
    """Raw label map (8/16-bit class values, or colours through the palette) -> uint8 class indices
    with 255 = ignore; any value it cannot place is a `DatasetError` naming the file."""

    def __init__(self, fc: FolderConfig):
        n = len(fc.classes)
        lut = np.full(65536, -1, dtype=np.int16)
        lut[:n] = np.arange(n)
        if fc.ignore_index is not None:
            lut[fc.ignore_index] = IGNORE
        colours: dict[int, int] = {}
        if fc.palette is not None:
            colours = {r << 16 | g << 8 | b: i for i, (r, g, b) in enumerate(fc.palette)}
        for key, target in fc.label_map.items():
            lo, hi, is_colour = parse_map_key(key)
            if is_colour:
                colours[lo] = IGNORE if target == "ignore" else target
            else:
                lut[lo:hi + 1] = IGNORE if target == "ignore" else np.arange(target, target + hi - lo + 1)
        self.lut, self.colours, self.num_classes = lut, colours, n
        self.has_palette = fc.palette is not None

    def read_raw(self, path: str) -> np.ndarray:
        """The label file as stored: HxW uint8/uint16 values, or HxWx3 uint8 RGB."""
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: label file not found")
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"{path}: cannot decode label image (corrupt or not an image)")
        if raw.ndim == 3 and raw.shape[2] == 1:
            raw = raw[..., 0]
        if raw.ndim == 3:
            if raw.dtype != np.uint8 or raw.shape[2] not in (3, 4):
                raise DatasetError(f"{path}: expected an 8-bit RGB colour label map, got {raw.shape[2]} channels "
                                   f"of {raw.dtype}")
            if not self.has_palette:
                raise DatasetError(f"{path}: a colour label map needs data.folder.palette (the colour of each "
                                   "class); or store class indices in a single-channel PNG")
            raw = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB)
        elif raw.dtype not in (np.uint8, np.uint16):
            raise DatasetError(f"{path}: expected an 8- or 16-bit label PNG, got {raw.dtype}")
        return raw

    def map_raw(self, raw: np.ndarray) -> tuple[np.ndarray, list]:
        """(int16 class map with -1 where undecodable, the first few undecodable raw values)."""
        if raw.ndim == 3:
            code = (raw[..., 0].astype(np.int32) << 16) | (raw[..., 1].astype(np.int32) << 8) | raw[..., 2]
            values, inverse = np.unique(code, return_inverse=True)
            targets = np.array([self.colours.get(int(v), -1) for v in values], dtype=np.int16)
            mapped = targets[inverse.reshape(code.shape)]
            bad = [(int(v) >> 16, int(v) >> 8 & 255, int(v) & 255) for v, t in zip(values, targets) if t < 0]
            return mapped, [list(c) for c in bad[:5]]
        mapped = self.lut[raw]
        bad = np.unique(raw[mapped < 0])[:5].tolist() if (mapped < 0).any() else []
        return mapped, bad

    def outside_message(self, path: str, bad: list) -> str:
        what = "colours" if bad and isinstance(bad[0], list) else "label values"
        return (f"{path}: {what} {bad} are outside the {self.num_classes} declared classes (data.folder.classes); "
                f"map them with data.folder.label_map (e.g. {{{self._example(bad[0])}: ignore}})")

    @staticmethod
    def _example(value) -> str:
        return '"{},{},{}"'.format(*value) if isinstance(value, list) else str(value)

    def decode(self, path: str) -> np.ndarray:
        mapped, bad = self.map_raw(self.read_raw(path))
        if bad:
            raise DatasetError(self.outside_message(path, bad))
        return mapped.astype(np.uint8)


class FolderDataset(SegmentationDataset):
    """`SegmentationDataset` whose labels go through a `LabelDecoder` instead of a lookup table."""

    def __init__(self, samples: list[Sample], decoder: LabelDecoder, transform, *, seed: int = 0,
                 description: str = ""):
        super().__init__(samples, {}, transform, seed=seed, description=description)
        self.decoder = decoder

    def read_label(self, sample: Sample) -> np.ndarray:
        return self.decoder.decode(sample.label)


# --- layout ------------------------------------------------------------------------------------
def resolve_root(name: str, root: str | None) -> str:
    """`data.root` (camvid: else $CAMVID_DATASET); a one-line error when it is not a folder."""
    if name == "camvid":
        root = root or os.environ.get("CAMVID_DATASET")
        if not root:
            raise DatasetError(f"data.root: not set and $CAMVID_DATASET is empty; expected {CAMVID_LAYOUT}")
    elif not root:
        raise DatasetError("data.root: required with data.name: folder (the folder holding the splits)")
    if not os.path.isdir(root):
        hint = f"; expected {CAMVID_LAYOUT}" if name == "camvid" else ""
        raise DatasetError(f"data.root: '{root}' is not a folder{hint}")
    return root


def _under(root: str, rel: str) -> str:
    return os.path.normpath(os.path.join(root, os.path.expanduser(rel)))


def split_folders(fc: FolderConfig, split: str) -> tuple[str, str]:
    lay: SplitLayout = getattr(fc, split)
    return (lay.images or DEFAULT_SPLIT["images"].format(split=split),
            lay.labels or DEFAULT_SPLIT["labels"].format(split=split))


def find_samples(root: str, fc: FolderConfig, split: str) -> list[Sample]:
    """The split's (image, label) pairs, sorted; one-line errors for a missing folder or list file, an
    empty split, and images without a label (with how many)."""
    key = f"data.folder.{split}"
    lay: SplitLayout = getattr(fc, split)
    images_rel, labels_rel = split_folders(fc, split)
    images_dir, labels_dir = _under(root, images_rel), _under(root, labels_rel)
    if lay.list_file:
        return _listed(root, fc, split, _under(root, lay.list_file), images_dir, labels_dir)
    for sub, path in (("images", images_dir), ("labels", labels_dir)):
        if not os.path.isdir(path):
            raise DatasetError(f"{key}.{sub}: folder {path} not found")
    images = sorted(os.path.join(d, f) for d, _, files in os.walk(images_dir) for f in files
                    if f.endswith(fc.image_suffix))
    if not images:
        raise DatasetError(f"{key}.images: no files ending in '{fc.image_suffix}' under {images_dir} "
                           "(data.folder.image_suffix)")
    samples, missing = [], []
    for image in images:
        stem = os.path.relpath(image, images_dir)[: -len(fc.image_suffix)]
        label = os.path.join(labels_dir, stem + fc.label_suffix)
        if os.path.isfile(label):
            samples.append(Sample(image, label, stem, "folder"))
        else:
            missing.append(label)
    if missing:
        raise DatasetError(f"{key}.labels: {len(missing)} of {len(images)} images have no label file "
                           f"(first missing: {missing[0]}; data.folder.label_suffix '{fc.label_suffix}')")
    return samples


def _listed(root: str, fc: FolderConfig, split: str, listing: str, images_dir: str, labels_dir: str) -> list[Sample]:
    """A list file: `image label` per line (paths relative to the root), or one stem per line (then the
    split's images/labels folders and the suffixes complete it). `#` starts a comment."""
    if not os.path.isfile(listing):
        raise DatasetError(f"data.folder.{split}.list: list file {listing} not found")
    samples, missing, total = [], [], 0
    with open(listing, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if len(parts) == 2:
                image, label = _under(root, parts[0]), _under(root, parts[1])
                name = os.path.splitext(os.path.basename(parts[0]))[0]
            elif len(parts) == 1:
                image = os.path.join(images_dir, parts[0] + fc.image_suffix)
                label = os.path.join(labels_dir, parts[0] + fc.label_suffix)
                name = parts[0]
            else:
                raise DatasetError(f"{listing}:{lineno}: expected 'image label' or one stem, got {line.strip()!r}")
            total += 1
            if not os.path.isfile(image):
                raise DatasetError(f"{listing}:{lineno}: image {image} not found")
            if os.path.isfile(label):
                samples.append(Sample(image, label, name, "folder"))
            else:
                missing.append(label)
    if not total:
        raise DatasetError(f"data.folder.{split}.list: {listing} lists no files (split '{split}' is empty)")
    if missing:
        raise DatasetError(f"{listing}: {len(missing)} of {total} listed images have no label file "
                           f"(first missing: {missing[0]})")
    return samples


def check_label_values(samples: list[Sample], decoder: LabelDecoder, n: int = CHECK_FILES) -> None:
    """Decode `n` label files spread over the split; the first undecodable one is the error."""
    if not samples:
        return
    for i in sorted(set(np.linspace(0, len(samples) - 1, min(n, len(samples))).round().astype(int).tolist())):
        path = samples[i].label
        _, bad = decoder.map_raw(decoder.read_raw(path))
        if bad:
            raise DatasetError(decoder.outside_message(path, bad))


@dataclass(frozen=True)
class Resolved:
    root: str
    config: FolderConfig
    decoder: LabelDecoder
    palette: np.ndarray


def resolve(name: str, root: str | None, fc: FolderConfig) -> Resolved:
    root = resolve_root(name, root)
    palette = np.asarray(fc.palette, dtype=np.uint8) if fc.palette is not None else default_palette(len(fc.classes))
    return Resolved(root, fc, LabelDecoder(fc), palette)


def preflight(cfg: dict) -> str | None:
    """File checks of a folder/camvid run config before training (no-op for other datasets): root,
    split folders / list files, images without a label, label values on a sample of files. Returns
    the dataset's absolute root (camvid: perhaps from $CAMVID_DATASET), None for other datasets."""
    from .config import parse_data_config

    dc = parse_data_config(cfg)
    if dc.name not in NAMES:
        return None
    res = resolve(dc.name, dc.root, dc.folder)
    for split in ("train", "val"):
        check_label_values(find_samples(res.root, res.config, split), res.decoder)
    return os.path.abspath(res.root)
