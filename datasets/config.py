"""The `data` section of the run config, validated into a frozen dataclass.

Every key has the default of docs/config.md; unknown keys are errors (a typo in a search space
would otherwise be silently ignored). Errors are one line naming the dotted key. `DEFAULTS` is the
one table of `data` defaults: `hpo.config.normalize` fills a run config's `data` section from it.
`root: null` means the dataset's own default (synthetic: `data/synthetic`; Cityscapes:
`$CITYSCAPES_DATASET`; Pascal-Context: `$PASCAL_CONTEXT_DATASET`).

Keys beyond docs/config.md (documented in docs/datasets.md):
- `crop_mode: random | center` -- msglore trains on a *center* 512x512 crop of the 512x1024 image.
- `val_full_res_labels: bool` -- keep val labels at their source resolution (msglore scores
  predictions upsampled to 1024x2048); the caller then upsamples logits to the label size,
  e.g. `predict_logits(..., out_size=label.shape[-2:])`.
- `size_divisor: int | null` -- val images are resized to floor(H/d)*d x floor(W/d)*d
  (SpaceMeshLab on Pascal-Context uses 16).
- `folder: mapping | null` -- the layout, classes, palette and label map of `name: folder` (and
  overrides of the `camvid` preset), validated by `datasets.folder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import DatasetError

NAMES = ("synthetic", "cityscapes", "pascal_context", "folder", "camvid")
DEFAULTS: dict[str, Any] = {
    "name": "synthetic", "root": None, "crop": [128, 128], "crop_mode": "random", "resize": None,
    "scale": [0.5, 2.0], "flip": True, "jitter": True, "max_class_ratio": 1.0, "batch_size": 8,
    "val_batch_size": 2, "workers": 0, "generate": None, "val_full_res_labels": False, "size_divisor": None,
    "folder": None,
}


@dataclass(frozen=True)
class DataConfig:
    name: str
    root: str | None
    crop: tuple[int, int] | None
    crop_mode: str
    resize: tuple[int, int] | None
    scale: tuple[float, float] | None
    flip: bool
    jitter: bool
    max_class_ratio: float
    batch_size: int
    val_batch_size: int
    workers: int
    generate: dict | None
    val_full_res_labels: bool
    size_divisor: int | None
    seed: int
    folder: Any = None          # datasets.folder.FolderConfig for `folder` / `camvid`, else None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pair(key: str, v, *, optional: bool) -> tuple[int, int] | None:
    if v is None and optional:
        return None
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_int(x) and x >= 1 for x in v):
        raise DatasetError(f"data.{key}: expected [height, width] of positive integers"
                           f"{' or null' if optional else ''}, got {v!r}")
    return int(v[0]), int(v[1])


def _bool(key: str, v) -> bool:
    if not isinstance(v, bool):
        raise DatasetError(f"data.{key}: expected true or false, got {v!r}")
    return v


def _int(key: str, v, lo: int) -> int:
    if not _is_int(v) or v < lo:
        raise DatasetError(f"data.{key}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def parse_data_config(cfg: dict) -> DataConfig:
    """Validate `cfg["data"]` (whole run config in) and fill defaults."""
    if not isinstance(cfg, dict):
        raise DatasetError(f"run config: expected a mapping, got {type(cfg).__name__}")
    data = cfg.get("data") or {}
    if not isinstance(data, dict):
        raise DatasetError(f"data: expected a mapping, got {data!r}")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise DatasetError(f"data.{unknown[0]}: unknown key; expected one of {', '.join(DEFAULTS)}")
    d = {**DEFAULTS, **data}

    if d["name"] not in NAMES:
        raise DatasetError(f"data.name: expected one of {', '.join(NAMES)}, got {d['name']!r}")
    if d["root"] is not None and (not isinstance(d["root"], str) or not d["root"]):
        raise DatasetError(f"data.root: expected a path string or null, got {d['root']!r}")
    if d["crop_mode"] not in ("random", "center"):
        raise DatasetError(f"data.crop_mode: expected random or center, got {d['crop_mode']!r}")
    scale = d["scale"]
    if scale is not None:
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2 or not all(_is_num(s) for s in scale)
                or not 0 < scale[0] <= scale[1]):
            raise DatasetError(f"data.scale: expected [low, high] with 0 < low <= high, or null, got {scale!r}")
        scale = (float(scale[0]), float(scale[1]))
    ratio = d["max_class_ratio"]
    if not _is_num(ratio) or not 0 < ratio <= 1:
        raise DatasetError(f"data.max_class_ratio: expected a number in (0, 1] (1.0 = off), got {ratio!r}")
    divisor = d["size_divisor"]
    if divisor is not None:
        divisor = _int("size_divisor", divisor, 1)
    generate = d["generate"]
    if generate is not None and not isinstance(generate, dict):
        raise DatasetError(f"data.generate: expected a mapping {{train, val, size, seed}} or null, got {generate!r}")
    if generate is not None:
        from .synthetic import DEFAULTS as GEN_DEFAULTS, normalize_params
        bad = sorted(set(generate) - set(GEN_DEFAULTS))
        if bad:
            raise DatasetError(f"data.generate.{bad[0]}: unknown key; expected one of {', '.join(GEN_DEFAULTS)}")
        generate = normalize_params(**generate)
    seed = cfg.get("seed", 0)
    if not _is_int(seed):
        raise DatasetError(f"seed: expected an integer, got {seed!r}")
    folder = d["folder"]
    if d["name"] in ("folder", "camvid"):
        from .folder import parse_folder_config
        model = cfg.get("model")
        folder = parse_folder_config(d["name"], folder, model.get("num_classes") if isinstance(model, dict) else None)
    elif folder is not None:
        raise DatasetError(f"data.folder: only read with data.name folder or camvid, not {d['name']}")

    return DataConfig(
        name=d["name"], root=d["root"], crop=_pair("crop", d["crop"], optional=True), crop_mode=d["crop_mode"],
        resize=_pair("resize", d["resize"], optional=True), scale=scale, flip=_bool("flip", d["flip"]),
        jitter=_bool("jitter", d["jitter"]), max_class_ratio=float(ratio),
        batch_size=_int("batch_size", d["batch_size"], 1), val_batch_size=_int("val_batch_size", d["val_batch_size"], 1),
        workers=_int("workers", d["workers"], 0), generate=generate,
        val_full_res_labels=_bool("val_full_res_labels", d["val_full_res_labels"]), size_divisor=divisor,
        seed=int(seed), folder=folder,
    )
