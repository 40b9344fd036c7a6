"""benchmarks.curve_table: a table built on any run config's data (here a folder dataset written in
tmp_path) is what hpo.replay reads; the embedded toy task's table is still what the defaults build."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from benchmarks import curve_table as ct

REPO = Path(__file__).resolve().parents[1]


def folder_run_config(tmp_path: Path) -> Path:
    """4 train / 2 val random 48x64 images with labels 0..2 (and 255 speckle), in the folder layout;
    the CamVid table's run config pointed at them, shrunk to a few steps."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for d in ("images", "labels"):
            (root / d / split).mkdir(parents=True)
        for i in range(n):
            lab = np.zeros((48, 64), np.uint8)
            lab[:, 21:42], lab[:, 42:] = 1, 2
            lab[rng.random(lab.shape) < 0.05] = 255
            img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            img[lab == 1] //= 2
            assert cv2.imwrite(str(root / "images" / split / f"s{i}.png"), img)
            assert cv2.imwrite(str(root / "labels" / split / f"s{i}.png"), lab)
    cfg = yaml.safe_load((REPO / "search_spaces" / "configs" / "msglore_camvid_table.yaml").read_text())
    cfg["model"]["num_classes"] = 3
    cfg["data"].update({"name": "folder", "root": None, "resize": None, "crop": [32, 32], "batch_size": 2,
                        "val_batch_size": 2, "folder": {"classes": ["a", "b", "c"]}})
    cfg["budget"].update({"epochs": 5, "iters_per_epoch": 2})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_table_on_a_folder_dataset_is_what_the_replay_reads(tmp_path, capsys):
    import torch

    from hpo.simulation.curves import from_table

    config, out = folder_run_config(tmp_path), tmp_path / "tables" / "tiny.npz"
    threads = torch.get_num_threads()
    try:
        assert ct.main(["--config", str(config), "--data-root", str(tmp_path / "data"), "--epochs", "2",
                        "--seeds", "1", "--configs", "2", "--workers", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    runs = out.with_suffix(".jsonl").read_text().splitlines()
    assert len(runs) == 2                                   # resumable record: one line per run

    z = np.load(out)
    assert "annealed" not in z.files                        # --config: no annealed forks by default
    assert z["raw"].shape == (1, 2, 1, 2) and z["params"].shape == (2, len(ct.SPACE))
    meta = json.loads(str(z["meta"]))
    assert meta["data"] == "folder" and meta["config"] == str(config.resolve()) and meta["epochs"] == [1, 2]
    assert meta["data_root"] == str(tmp_path / "data") and meta["run_config"]["budget"]["epochs"] == 2
    assert list(meta["schedules"]) == ["poly"] and meta["seeds"] == [0] and meta["built_utc"].endswith("Z")
    assert meta["command"] == (f"python -m benchmarks.curve_table --config {config.resolve()} --data-root {tmp_path / 'data'}"
                               f" --schedules poly --epochs 2 --seeds 1 --configs 2 --out {out.resolve()}")

    src = from_table(out)
    assert src.curves.shape == (2, 1, 2) and list(src.epochs) == [1, 2]
    assert src.params == [json.loads(json.dumps(c)) for c in ct.sobol_configs(2)]
    assert np.isfinite(src.curves).any()

    capsys.readouterr()
    assert ct.main(["--report", "--out", str(out)]) == 0    # one schedule, one seed, no annealed scores
    report = capsys.readouterr().out
    assert "| poly | plain -> final, same seed |" in report and "annealed" not in report

    # the resume guard: runs of another length are not mixed into this table
    with pytest.raises(SystemExit, match="epochs"):
        ct.main(["--config", str(config), "--data-root", str(tmp_path / "data"), "--epochs", "3", "--seeds", "1",
                 "--configs", "2", "--workers", "1", "--out", str(out)])


def test_the_defaults_still_build_the_shipped_toy_table():
    z = np.load(ct.TABLE)
    meta = json.loads(str(z["meta"]))
    spec = ct.Spec()
    assert meta["space"] == ct.SPACE and meta["task"] == ct.TASK and meta["seeds"] == list(spec.seeds)
    assert meta["schedules"] == {k: {"optim": ct.SCHEDULES[k][0], "anneal_epochs": spec.fork_epochs(k)}
                                 for k in spec.schedules}
    assert meta["anneal_steps"] == ct.ANNEAL_STEPS and spec.forks and spec.config is None
    assert spec.command() == meta["command"] == "python -m benchmarks.curve_table --configs 256"
    configs = ct.sobol_configs(len(meta["sobol_indices"]))
    assert np.array_equal(z["params"], np.array([[configs[i][k] for k in ct.SPACE] for i in meta["sobol_indices"]]))
    assert z["raw"].shape == (len(spec.schedules), 256, len(spec.seeds), spec.epochs)


def test_flags_are_checked_before_anything_trains(tmp_path):
    with pytest.raises(SystemExit, match="--out"):
        ct.main(["--config", "search_spaces/configs/msglore_camvid_table.yaml"])
    with pytest.raises(SystemExit, match="--schedules"):
        ct.main(["--schedules", "poly,cosine", "--out", str(tmp_path / "t.npz")])
    with pytest.raises(SystemExit, match="--data-root"):
        ct.main(["--data-root", str(tmp_path)])
