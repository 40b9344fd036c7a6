"""Pre-flight: data and model-config mistakes are one line and exit 2 before any trial starts, in the
dry run too (issue 20); the check decodes a sample, not every file, and says what it checked."""

from __future__ import annotations

import shutil

import pytest
import yaml

from helpers import write_space


def _space(tmp_path, data_root, **base_over):
    space = write_space(tmp_path, data_root, "pre", num_samples=2)
    doc = yaml.safe_load(space.read_text())
    for key, value in base_over.items():
        section, name = key.split(".")
        doc["base"][section][name] = value
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    return space


def _run(args, capsys):
    from hpo import search

    rc = search.main(args)
    return rc, capsys.readouterr()


def test_dry_run_reports_what_it_checked(tiny_data, tmp_path, capsys):
    rc, out = _run([str(_space(tmp_path, tiny_data)), "--dry-run"], capsys)
    assert rc == 0, out.err
    assert "data: synthetic, 24 train / 6 val images, 19 classes; decoded 14 images and label maps" in out.out


@pytest.mark.parametrize("classes", [11, 25])          # too few: the loss indexes out of range; too many
def test_wrong_num_classes_is_one_line_before_any_trial(tiny_data, tmp_path, capsys, monkeypatch, classes):
    monkeypatch.chdir(tmp_path)
    space = _space(tmp_path, tiny_data, **{"model.num_classes": classes})
    for args in ([str(space), "--dry-run"], [str(space)]):
        rc, out = _run(args, capsys)
        assert rc == 2
        assert out.err.strip().splitlines() == [f"error: model.num_classes: {classes}, but synthetic data has 19 "
                                                 "classes (road, sidewalk, building, wall, ...)"]
    assert not (tmp_path / "ray_results" / "pre").exists() and not (tmp_path / "mlflow.db").exists()


def test_corrupt_label_and_empty_root_are_named(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    from datasets import build

    cfg = yaml.safe_load(_space(tmp_path, data).read_text())["base"]
    first = build(cfg).train.samples[0].label                       # index 0 is always in the sample
    with open(first, "r+b") as f:
        f.truncate(40)                                                # a PNG cut short
    rc, out = _run([str(_space(tmp_path, data)), "--dry-run"], capsys)
    assert rc == 2 and out.err.strip() == f"error: {first}: cannot decode label image (corrupt or not an image)"

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out = _run([str(_space(tmp_path, empty)), "--dry-run"], capsys)
    assert rc == 2 and len(out.err.strip().splitlines()) == 1 and str(empty) in out.err


def test_cuda_without_gpus_per_trial_is_one_line(tiny_data, tmp_path, capsys):
    """runtime.device: cuda with resources.gpu 0 would fail every trial at its first step."""
    space = _space(tmp_path, tiny_data, **{"runtime.device": "cuda"})
    rc, out = _run([str(space), "--dry-run"], capsys)
    assert rc == 2
    assert out.err.strip() == ("error: base.runtime.device: cuda, but resources.gpu is 0, so trials get no GPU; "
                               "set resources.gpu (e.g. 1 or 0.5) or runtime.device: auto")
