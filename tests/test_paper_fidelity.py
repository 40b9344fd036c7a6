"""Paper fidelity of the presets and shipped configs (issue 12): ASPP rates per output stride, preset
strides, msglore's loss terms (eq. 4), the pretrained-weights warning, the aux head's block and the
GloRe init. Paper-size models are built on the meta device: no memory, no compute."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from models import build_model, preset, seg_loss

CONFIGS = Path(__file__).resolve().parents[1] / "search_spaces" / "configs"


def meta(cfg: dict) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(copy.deepcopy(cfg))


def aspp_rates(aspp) -> list[int]:
    return [b[0].dilation[0] for b in list(aspp.branches)[1:4]]


# ---------------------------------------------------------------- 1. ASPP rates follow the stride
@pytest.mark.parametrize("name", ["deeplabv3plus", "spacemeshlab"])
@pytest.mark.parametrize("output_stride,rates", [(8, [12, 24, 36]), (16, [6, 12, 18])])
def test_paper_preset_aspp_rates_follow_the_output_stride(name, output_stride, rates):
    cfg = preset(name, "paper")
    assert cfg["model"]["aspp"]["rates"] is None            # derived, not hard-coded
    cfg["model"]["backbone"]["output_stride"] = output_stride
    if name == "spacemeshlab":
        cfg["model"]["context"] = "aspp"
    model = meta(cfg)
    assert aspp_rates(model.aspp if name == "deeplabv3plus" else model.context) == rates


def test_explicit_aspp_rates_still_win():
    cfg = preset("deeplabv3plus", "paper")
    cfg["model"]["aspp"]["rates"] = [3, 5, 7]
    cfg["model"]["backbone"]["output_stride"] = 16
    assert aspp_rates(meta(cfg).aspp) == [3, 5, 7]


# ---------------------------------------------------------------- 2. preset output strides
@pytest.mark.parametrize("name,output_stride", [
    ("fcn", 8), ("glore", 8), ("msglore", 8),      # msglore: "the output stride is 1/8", like GloRe
    ("deeplabv3plus", 8),                          # the OS8 baseline (ASPP rates follow if changed)
    ("spacemeshlab", 16),                          # x4 shuffle steps, block 3 omitted, ASPP 6/12/18
])
def test_paper_preset_output_stride(name, output_stride):
    cfg = preset(name, "paper")
    assert cfg["model"]["backbone"]["output_stride"] == output_stride
    assert meta(cfg).backbone.output_stride == output_stride


def test_spacemeshlab_paper_preset_shuffles_in_whole_x4_steps_and_os8_is_one_key_away():
    model = meta(preset("spacemeshlab", "paper"))
    assert list(model.exchanges) == ["block1", "block2", "block4", "block5"]
    steps = {name: (ex.up.steps, ex.down.steps) for name, ex in model.exchanges.items()}
    assert steps == {"block1": ([4], [4]), "block2": ([4], [4]), "block4": ([4, 4], [4, 4]),
                     "block5": ([4, 4], [4, 4])}
    assert model.context_up.steps == [4] and model.spam_down.steps == [4]   # decoder meets at stride 4
    assert model.size_divisibility == 16
    cfg = preset("spacemeshlab", "paper")
    cfg["model"]["backbone"]["output_stride"] = 8
    model = meta(cfg)
    assert model.backbone.strides["block5"] == 8 and model.exchanges["block5"].up.steps == [4, 2]


# ---------------------------------------------------------------- 3. msglore: eq. (4) only
def test_msglore_paper_loss_is_main_plus_alpha_selection_only():
    """L_opt = L + alpha * L_aux (eq. 4): no block-4 aux head, no block-4 weight, in the preset and
    the shipped Cityscapes config; the switch still brings it back."""
    shipped = yaml.safe_load((CONFIGS / "msglore_cityscapes.yaml").read_text())
    for cfg in (preset("msglore", "paper"), shipped):
        assert cfg["model"]["aux_head"] is False
        assert cfg["loss"]["aux_weights"] == {"selection": 0.7}

    # the same structure at toy width: a real forward, the loss terms are exactly {main, selection}
    torch.manual_seed(0)
    cfg = preset("msglore", "toy")
    cfg["model"]["aux_head"] = False
    cfg["loss"]["aux_weights"] = dict(preset("msglore", "paper")["loss"]["aux_weights"])
    model = build_model(cfg).train()
    out = model(torch.randn(2, 3, 64, 64))
    target = torch.randint(0, 19, (2, 64, 64))
    total, terms = seg_loss(out, target, cfg)
    assert set(out["aux"]) == {"selection"} and set(terms) == {"main", "selection"}
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(total, ce(out["out"], target) + 0.7 * ce(out["aux"]["selection"], target))

    cfg["model"]["aux_head"] = True                 # the switch is kept
    cfg["loss"]["aux_weights"]["block4"] = 0.4
    assert set(build_model(cfg)(torch.randn(2, 3, 64, 64))["aux"]) == {"selection", "block4"}


# ---------------------------------------------------------------- 4. pretrained weights
SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def test_scratch_warning_only_for_a_silent_null_at_depth_50_and_up():
    from models.backbone import scratch_warning

    for name, depth in (("msglore", 50), ("spacemeshlab", 101)):
        msg = scratch_warning(preset(name, "paper"))          # presets: null (no file assumed)
        assert msg.startswith("warning: model.backbone.pretrained is null") and "\n" not in msg
        assert f"ResNet-{depth}" in msg and "'none'" in msg
    cfg = preset("fcn", "paper")
    for value in ("none", "None", "weights/r50.pth"):
        cfg["model"]["backbone"]["pretrained"] = value
        assert scratch_warning(cfg) is None
    assert scratch_warning(preset("fcn", "toy")) is None     # ResNet-18: no ImageNet expectation
    assert scratch_warning({"model": {}}) is not None        # absent = null, default depth 50


@pytest.mark.parametrize("value", ["none", "NONE"])
def test_pretrained_none_trains_from_scratch_without_touching_the_filesystem(value):
    from hpo.training.prepare import absolutize_paths

    cfg = preset("fcn", "toy")
    cfg["model"]["backbone"]["pretrained"] = value
    assert build_model(cfg).backbone.conv1.weight.shape == (8, 3, 7, 7)
    cfg["data"] = {"root": None}
    assert absolutize_paths(cfg)["model"]["backbone"]["pretrained"] == value   # not made a path


def _space_with_backbone(tmp_path: Path, pretrained) -> Path:
    base = yaml.safe_load((CONFIGS / "msglore_toy.yaml").read_text())
    base["model"]["backbone"].update(depth=50, width=8, pretrained=pretrained)
    space = {"experiment": {"name": "scratch"}, "base": base,
             "space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.02}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_search_start_warns_once_for_null_and_is_silent_for_none(tmp_path, capsys):
    from hpo import search

    search.prepare(search.parse_args([str(_space_with_backbone(tmp_path, None))]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: model.backbone.pretrained is null"), err
    search.prepare(search.parse_args([str(_space_with_backbone(tmp_path, "none"))]))
    assert capsys.readouterr().err == ""


def test_hpo_train_warns_for_null(tmp_path, capsys):
    from hpo.config import ConfigError, load_run_config
    from hpo.training import run

    for pretrained, warned in ((None, True), ("none", False)):
        cfg = load_run_config(CONFIGS / "msglore_toy.yaml")
        cfg["model"]["backbone"].update(depth=50, width=8, pretrained=pretrained)
        with pytest.raises(ConfigError, match="--resume"):      # stops right after the check: no training
            run.train(cfg, tmp_path / "out", resume=True)
        err = capsys.readouterr().err
        assert ("warning: model.backbone.pretrained is null" in err) == warned, err


def test_shipped_paper_spaces_name_the_weights_and_fail_early_without_them(tmp_path, monkeypatch):
    from hpo.tuning.space import SpaceError, load_space
    from models.backbone import ResNetBackbone

    monkeypatch.chdir(tmp_path)                              # the relative path resolves here: no file
    for space, config, depth in (("msglore_selection.yaml", "msglore_cityscapes.yaml", 50),
                                 ("spacemeshlab_dilation.yaml", "spacemeshlab_cityscapes.yaml", 101)):
        pretrained = yaml.safe_load((CONFIGS / config).read_text())["model"]["backbone"]["pretrained"]
        assert pretrained.startswith("weights/resnet%d-" % depth) and pretrained.endswith(".pth")
        with pytest.raises(SpaceError) as err:
            load_space(SPACES / space)
        msg = str(err.value)
        assert "model.backbone.pretrained: no such file" in msg and "download.pytorch.org" in msg, msg

    # with the file in place (a meta-tensor stand-in: same keys and shapes, no weights) the space loads
    (tmp_path / "weights").mkdir()
    with torch.device("meta"):
        torch.save(ResNetBackbone(50, 8, 64).state_dict(), tmp_path / "weights" / "resnet50-0676ba61.pth")
    assert load_space(SPACES / "msglore_selection.yaml").base["model"]["backbone"]["pretrained"].endswith(".pth")


# ---------------------------------------------------------------- 5. smaller choices, now switches
@pytest.mark.parametrize("name", ["fcn", "spacemeshlab"])
def test_aux_block_switch_moves_the_aux_head(name):
    cfg = preset(name, "toy")
    assert build_model(cfg).aux_block == "block4"             # default: the PSPNet/mmseg convention
    cfg["model"]["aux_block"] = "block5"
    cfg["loss"]["aux_weights"] = {"block5": 0.4}
    model = build_model(cfg).train()
    assert model.aux_block4 is None and model.aux_block5.conv[0].in_channels == model.backbone.channels["block5"]
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out["aux"]) == {"block5"} and out["aux"]["block5"].shape == (2, 19, 64, 64)
    loss, terms = seg_loss(out, torch.randint(0, 19, (2, 64, 64)), cfg)
    assert set(terms) == {"main", "block5"}
    cfg["model"]["aux_block"] = "block3"
    with pytest.raises(ValueError, match=r"^model\.aux_block:"):
        build_model(cfg)


def test_glore_init_matches_the_official_xavier_initializer_and_stays_switchable():
    from models.glore import GloReUnit

    torch.manual_seed(0)
    unit = GloReUnit(512, 64)                                 # official GloRe_Unit(512, 64) + initializer.xavier
    for conv in (unit.conv_state, unit.conv_proj, unit.gcn.conv1, unit.gcn.conv2, unit.conv_extend):
        fan_in, fan_out = conv.weight.shape[1] * conv.weight[0, 0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
        assert conv.bias is None or not conv.bias.any()
    assert not unit.blocker.weight.any()                      # still starts as the identity
    default = GloReUnit(512, 64, init="default")
    assert default.gcn.conv1.bias.any()                       # PyTorch's uniform biases
    for name in ("glore", "msglore"):
        cfg = preset(name, "toy")
        unit = build_model(cfg).glore if name == "glore" else build_model(cfg).relation
        assert not unit.gcn.conv1.bias.any()
        cfg["model"]["glore"]["init"] = "default"
        unit = build_model(cfg).glore if name == "glore" else build_model(cfg).relation
        assert unit.gcn.conv1.bias.any()
        cfg["model"]["glore"]["init"] = "kaiming"
        with pytest.raises(ValueError, match=r"^model\.glore\.init:"):
            build_model(cfg)


def test_msglore_cityscapes_lr_is_the_papers_scaled_to_its_batch():
    cfg = yaml.safe_load((CONFIGS / "msglore_cityscapes.yaml").read_text())
    assert cfg["optim"]["lr"] == pytest.approx(0.006 * cfg["data"]["batch_size"] / 26, rel=0.01)  # linear rule
    space = yaml.safe_load((SPACES / "msglore_selection.yaml").read_text())
    assert space["space"]["optim.lr"]["default"] == cfg["optim"]["lr"]   # the paper's point, evaluated first


# ---------------------------------------------------------------- models.summary: params and FLOPs
def test_summary_paper_counts_params_and_forward_flops_on_meta(capsys):
    from models.summary import main as summary_main

    assert summary_main(["--preset", "paper", "--models", "fcn,spacemeshlab"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "GFLOPs fwd 1x3x512x1024" in out[1]
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert rows["fcn"][1] == "35,320,678" and float(rows["fcn"][5].replace(",", "")) == pytest.approx(592.2, abs=0.1)
    # SpaceMeshLab at OS16: blocks 4/5 and MetroCon² at 1/16 -> well under half the OS8 model's 1,306 G
    assert rows["spacemeshlab"][1] == "75,110,206"
    assert 400 < float(rows["spacemeshlab"][5].replace(",", "")) < 550
