"""The toy msglore run config shrunk to seconds per epoch: the one builder benchmarks and tests share.

Starts from the shipped `search_spaces/configs/msglore_toy.yaml` and points it at an existing
synthetic tree (no generation), with small crops and batches, a fixed number of SGD steps per
epoch and single-threaded CPU training, so several trials fit on two cores side by side.
"""

from __future__ import annotations

from pathlib import Path

TOY_CONFIG = Path(__file__).resolve().parents[1] / "search_spaces" / "configs" / "msglore_toy.yaml"


def toy_config(data_root: str | Path, *, epochs: int = 3, iters_per_epoch: int = 3, crop=(64, 64),
               batch_size: int = 4, val_batch_size: int = 6, overlays: int = 2, **eval_keys) -> dict:
    from hpo.config import load_yaml

    cfg = load_yaml(TOY_CONFIG)
    cfg["data"].update({"root": str(data_root), "generate": None, "crop": list(crop), "batch_size": batch_size,
                        "val_batch_size": val_batch_size, "workers": 0})
    cfg["budget"] = {"epochs": epochs, "iters_per_epoch": iters_per_epoch, "val_every": 1}
    cfg["eval"] = {"tta": False, "overlays": overlays, **eval_keys}
    cfg["runtime"] = {"device": "cpu", "threads": 1}
    return cfg
