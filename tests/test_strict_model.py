"""Strict model configs (issue 20): an unknown key under `model` is one line listing the known keys,
in run configs (hpo.train), space files (before Ray starts) and every build alike."""

from __future__ import annotations

import pytest
import torch
import yaml

from models.config import ConfigError
from models.registry import build_model, model_names, preset


@pytest.mark.parametrize("name", model_names())
def test_every_preset_builds_strictly(name):
    for kind in ("toy", "paper"):
        with torch.device("meta"):
            build_model(preset(name, kind))


@pytest.mark.parametrize("name, key, value, expected", [
    ("msglore", "drop_out", 0.1, "model.drop_out: unknown key for model msglore; known keys there: aux_channels, "
                                 "aux_head, backbone, dropout, glore, head_channels, name, num_classes, selection"),
    ("msglore", "selection", {"n3a": 4}, "model.selection.n3a: unknown key for model msglore; known keys there: "
                                         "channels, n3, n4, n5, order, pool, score_weighting"),
    ("spacemeshlab", "metrocon", {"gird": [1, 2]}, "model.metrocon.gird: unknown key for model spacemeshlab; "
                                                   "known keys there: cols, depth, impl, rows"),
])
def test_unknown_model_key_is_one_line(name, key, value, expected):
    cfg = preset(name, "toy")
    if isinstance(value, dict):
        cfg["model"].setdefault(key, {}).update(value)
    else:
        cfg["model"][key] = value
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        build_model(cfg)
    assert str(err.value) == expected


def test_a_preset_key_the_config_does_not_use_is_allowed():
    cfg = preset("spacemeshlab", "toy")
    assert "aspp" in cfg["model"]                      # used only with model.context: aspp
    with torch.device("meta"):
        build_model(cfg)


def test_space_file_and_hpo_train_refuse_an_unknown_model_key(tiny_data, tmp_path, capsys, monkeypatch):
    from helpers import write_space
    from hpo import search
    from hpo import train as hpo_train

    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, tiny_data, "strict", num_samples=2)
    doc = yaml.safe_load(space.read_text())
    doc["base"]["model"]["drop_out"] = 0.2
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert search.main([str(space), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.drop_out: unknown key for model msglore; known keys there: aux_channels" in err[0]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc["base"], sort_keys=False))
    assert hpo_train.main([str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model.drop_out: unknown key for model msglore")
