"""Before a training starts, on the machine that launches it: the data in place and checked, paths
that hold in any working directory, the model's structure checked without building it.

One piece for the search (`hpo.search`, before Ray starts), promotion and `hpo.train`, so that a bad
folder, label map or model key is the same one line everywhere. Room `hpo.training`: plain PyTorch,
never imports Ray, Optuna or MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def absolutize_paths(base: dict) -> dict:
    """Trials run in their own working directories: make file paths in the config absolute."""
    cfg = dict(base)
    data = dict(cfg["data"])
    if data.get("root"):
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    cfg["data"] = data
    pretrained = cfg["model"].get("backbone", {}).get("pretrained")
    if pretrained and str(pretrained).strip().lower() != "none":     # "none": from scratch, not a path
        model = dict(cfg["model"])
        model["backbone"] = dict(model["backbone"], pretrained=str(Path(pretrained).expanduser().resolve()))
        cfg["model"] = model
    return cfg


def prepare_data(cfg: dict, log: Callable[[str], None] | None = None) -> None:
    """The demo's synthetic set is generated on first use (race-safe: several trainings may start at
    once); a folder dataset's files are checked (one line naming the file or key, ValueError); a root
    taken from an environment variable ($CAMVID_DATASET) is written into `cfg`, so every trial (any
    node) reads the same one. `log` hears what was generated and the sample check's line."""
    from datasets import check_sample, preflight

    root = preflight(cfg)
    data = cfg["data"]
    if root and not data.get("root"):
        data["root"] = root
    if data["name"] == "synthetic" and data.get("generate"):
        from datasets.synthetic import DEFAULTS_ROOT, ensure

        root = data["root"] or DEFAULTS_ROOT
        if ensure(root, **data["generate"]) and log:
            log(f"generated the synthetic dataset in {root}")
    line = check_sample(cfg)       # a sample of files, and labels vs model.num_classes
    if log:
        log(line)


def data_to_generate(cfg: dict) -> bool:
    """The synthetic set `prepare_data` would generate (nothing to check before then)."""
    data = cfg["data"]
    if data["name"] != "synthetic" or not data.get("generate"):
        return False
    from datasets.synthetic import DEFAULTS_ROOT, is_populated

    return not is_populated(data["root"] or DEFAULTS_ROOT)


def check_model(cfg: dict):
    """Build the model on PyTorch's meta device: every structural check, no memory, no compute.
    A bad model key is a ValueError naming it (`model.<key>: ...`)."""
    import torch

    from models import build_model

    with torch.device("meta"):
        return build_model(cfg)
