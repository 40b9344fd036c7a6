"""models/: toy train steps for every registered model, backbone geometry, paper-size counts,
GloRe faithfulness, pretrained loading, config errors and the loss."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from models import ConfigError, build_model, model_names, preset, seg_loss
from models.backbone import ResNetBackbone, build_backbone
from models.glore import GloReUnit
from models.summary import main as summary_main

from helpers import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # toy tensors are tiny: intra-op threads only add sync overhead, badly so on a busy 2-core box
    with torch_threads(1):
        yield


def _one_line_config_error(cfg: dict, key: str) -> str:
    with pytest.raises(ConfigError) as info:
        build_model(cfg)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert msg.startswith(key + ":"), msg
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- every model: toy train step
@pytest.mark.parametrize("name", model_names())
def test_toy_preset_trains_one_step_with_finite_grads_everywhere(name):
    torch.manual_seed(0)
    cfg = preset(name, "toy")
    model = build_model(cfg).train()
    x = torch.randn(2, 3, 64, 96)                      # non-square on purpose
    target = torch.randint(0, cfg["model"]["num_classes"], (2, 64, 96))
    target[:, :4] = 255
    out = model(x)

    expected = (2, cfg["model"]["num_classes"], 64, 96)
    assert tuple(out["out"].shape) == expected
    assert set(out["aux"]) == set(cfg["loss"]["aux_weights"])
    for logits in out["aux"].values():
        assert tuple(logits.shape) == expected

    loss, terms = seg_loss(out, target, cfg)
    assert torch.isfinite(loss)
    assert set(terms) == {"main"} | {k for k, w in cfg["loss"]["aux_weights"].items() if w}
    loss.backward()
    bad = [n for n, p in model.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not bad, f"parameters without a finite gradient: {bad[:8]}"


@pytest.mark.parametrize("name", ["fcn", "glore", "msglore", "deeplabv3plus"])
def test_aux_head_switch_removes_block4_output(name):
    cfg = preset(name, "toy")
    cfg["model"]["aux_head"] = False
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert "block4" not in out["aux"]
    assert not any(n.startswith("aux_block4") for n, _ in model.named_parameters())
    assert set(out["aux"]) == ({"selection"} if name == "msglore" else set())


def test_msglore_softmax_scores_receive_gradient_only_with_score_weighting():
    for weighting in (True, False):
        torch.manual_seed(0)
        cfg = preset("msglore", "toy")
        cfg["model"]["selection"]["score_weighting"] = weighting
        model = build_model(cfg).train()
        out = model(torch.randn(2, 3, 64, 64))
        out["aux"]["selection"].sum().backward()
        idx = model.last_selected["block3"]
        assert idx.shape == (2, cfg["model"]["selection"]["n3"])
        unselected = sorted(set(range(16)) - set(idx.flatten().tolist()))
        g = model.selection["block3"].conv[0].weight.grad      # (16 out channels, ...)
        assert g[idx.flatten()].abs().sum() > 0
        # channels no image selected are reached only through the softmax normalisation
        assert (g[unselected].abs().sum() > 0) == weighting


def test_msglore_switches_and_output_stride_16_run():
    cfg = preset("msglore", "toy")
    for switch in ({"score_weighting": False}, {"pool": False}, {"order": "channel"}, {"channels": 12}):
        c = copy.deepcopy(cfg)
        c["model"]["selection"].update(switch)
        o = build_model(c)(torch.randn(2, 3, 64, 64))
        assert o["aux"]["selection"].shape == (2, 19, 64, 64)
    c = copy.deepcopy(cfg)
    c["model"]["backbone"]["output_stride"] = 16      # block 3 at stride 8 is resized to block 5's 16
    assert build_model(c)(torch.randn(2, 3, 64, 96))["out"].shape == (2, 19, 64, 96)


def test_deeplabv3plus_rates_default_by_output_stride():
    cfg = preset("deeplabv3plus", "toy")
    del cfg["model"]["aspp"]["rates"]
    dil = lambda m: [b[0].dilation[0] for b in list(m.aspp.branches)[1:4]]  # noqa: E731
    assert dil(build_model(cfg)) == [12, 24, 36]
    cfg["model"]["backbone"]["output_stride"] = 16
    assert dil(build_model(cfg)) == [6, 12, 18]


# ---------------------------------------------------------------- backbone
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_backbone_strides_and_channels(depth, output_stride):
    net = ResNetBackbone(depth, output_stride, width=4).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    exp = 1 if depth in (18, 34) else 4
    assert net.channels == {"block2": 4 * exp, "block3": 8 * exp, "block4": 16 * exp, "block5": 32 * exp}
    assert net.strides == {"block2": 4, "block3": 8, "block4": min(16, output_stride), "block5": output_stride}
    for stage, f in feats.items():
        assert f.shape == (1, net.channels[stage], 64 // net.strides[stage], 96 // net.strides[stage])


@pytest.mark.parametrize("depth,count", [(18, 11_176_512), (50, 23_508_032), (101, 42_500_160)])
def test_backbone_matches_torchvision_parameter_count(depth, count):
    # torchvision resnet{18,50,101} totals minus their fc layer (513,000 / 2,049,000 / 2,049,000)
    assert sum(p.numel() for p in ResNetBackbone(depth, 8, 64).parameters()) == count


# ---------------------------------------------------------------- paper-size configs
def test_paper_presets_construct_with_plausible_counts():
    counts = {}
    for name in ["fcn", "glore", "msglore", "deeplabv3plus"]:
        cfg = preset(name, "paper")
        assert cfg["model"]["num_classes"] == 19 and cfg["model"]["backbone"]["width"] == 64
        counts[name] = sum(p.numel() for p in build_model(cfg).parameters())
    assert 33e6 < counts["fcn"] < 38e6                      # ResNet-50 23.5M + FCN head 9.4M + aux 2.4M
    assert counts["glore"] - counts["fcn"] == 185_600      # exactly one GloRe unit (512, 64)
    assert 40e6 < counts["deeplabv3plus"] < 46e6
    assert 80e6 < counts["msglore"] < 90e6                 # + width-preserving selection convs (~49.5M)
    p = preset("msglore", "paper")
    assert (p["model"]["selection"]["n3"], p["model"]["selection"]["n4"], p["model"]["selection"]["n5"]) == (11, 21, 32)
    assert p["loss"]["aux_weights"] == {"selection": 0.7}   # eq. (4): no block-4 aux loss


# ---------------------------------------------------------------- GloRe
def test_glore_unit_matches_official_parameter_count_and_starts_as_identity():
    unit = GloReUnit(512, 64)
    # official GloRe_Unit(512, 64): conv_state 512*128+128, conv_proj 512*64+64, gcn 64*64+64 + 128*128,
    # conv_extend 128*512, blocker BN 2*512
    assert sum(p.numel() for p in unit.parameters()) == 185_600
    unit.eval()
    x = torch.randn(2, 512, 6, 9)
    with torch.no_grad():
        assert torch.equal(unit(x), x)


def test_glore_unit_external_projection():
    unit = GloReUnit(16, 4, num_nodes=7, own_projection=False)
    assert unit.conv_proj is None
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        unit.blocker.weight.fill_(1.0)                  # open the residual branch
        y = unit.train()(x, projection=torch.randn(2, 7, 5, 6))
        assert y.shape == x.shape and not torch.equal(y, x)
    with pytest.raises(ValueError):
        unit(x)
    with pytest.raises(ValueError):
        unit(x, projection=torch.randn(2, 6, 5, 6))


# ---------------------------------------------------------------- pretrained loading
def _cfg_with_pretrained(path) -> dict:
    cfg = preset("fcn", "toy")
    cfg["model"]["backbone"]["pretrained"] = str(path)
    return cfg


def test_pretrained_state_dict_loads_and_ignores_fc(tmp_path):
    torch.manual_seed(1)
    src = ResNetBackbone(18, 8, 8)
    state = src.state_dict()
    state["fc.weight"] = torch.randn(1000, 64)          # torchvision checkpoints carry the classifier
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    model = build_model(_cfg_with_pretrained(path))
    for k, v in src.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k


def test_pretrained_mismatch_lists_differing_keys(tmp_path):
    wide = ResNetBackbone(18, 8, 16).state_dict()
    path = tmp_path / "wide.pth"
    torch.save(wide, path)
    msg = _one_line_config_error(_cfg_with_pretrained(path), "model.backbone.pretrained")
    assert "shape mismatch" in msg and "conv1.weight" in msg and "more)" in msg

    state = ResNetBackbone(18, 8, 8).state_dict()
    del state["layer4.1.conv2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, path)
    msg = _one_line_config_error(_cfg_with_pretrained(path), "model.backbone.pretrained")
    assert "1 missing: layer4.1.conv2.weight" in msg and "1 unexpected: layer5.0.conv1.weight" in msg


# ---------------------------------------------------------------- bad configs
def test_unknown_model_name_lists_valid_names():
    cfg = preset("fcn", "toy")
    cfg["model"]["name"] = "segformer"
    msg = _one_line_config_error(cfg, "model.name")
    assert "segformer" in msg and all(n in msg for n in model_names())


@pytest.mark.parametrize("key,value", [("n3", 80), ("n3", 0), ("n5", 65)])
def test_selection_count_out_of_range(key, value):
    cfg = preset("msglore", "toy")
    cfg["model"]["selection"][key] = value
    msg = _one_line_config_error(cfg, f"model.selection.{key}")
    assert f"got {value}" in msg
    if key == "n3":
        assert "in [1, 16] (block3 has 16 channels)" in msg


@pytest.mark.parametrize("mutate,key", [
    (lambda c: c["model"]["backbone"].update(width=0), "model.backbone.width"),
    (lambda c: c["model"]["backbone"].update(depth=42), "model.backbone.depth"),
    (lambda c: c["model"]["backbone"].update(output_stride=4), "model.backbone.output_stride"),
    (lambda c: c["model"].pop("num_classes"), "model.num_classes"),
    (lambda c: c["model"].pop("name"), "model.name"),
    (lambda c: c["model"]["aspp"].update(rates=[6, "x"]), "model.aspp.rates"),
])
def test_bad_config_is_one_line_error_naming_key(mutate, key):
    cfg = preset("deeplabv3plus", "toy")
    mutate(cfg)
    _one_line_config_error(cfg, key)


def test_build_backbone_reads_defaults_from_empty_config():
    assert build_backbone({"model": {}}).channels["block5"] == 2048


# ---------------------------------------------------------------- loss
def test_loss_weights_terms_and_ignores_255():
    torch.manual_seed(0)
    out = {"out": torch.randn(2, 5, 8, 8), "aux": {"block4": torch.randn(2, 5, 8, 8),
                                                  "selection": torch.randn(2, 5, 8, 8)}}
    target = torch.randint(0, 5, (2, 8, 8))
    target[0, :3] = 255
    cfg = {"loss": {"ignore_index": 255, "aux_weights": {"block4": 0.4, "selection": 0.7}}}
    total, terms = seg_loss(out, target, cfg)
    ce = lambda x: F.cross_entropy(x, target, ignore_index=255)  # noqa: E731
    expected = ce(out["out"]) + 0.4 * ce(out["aux"]["block4"]) + 0.7 * ce(out["aux"]["selection"])
    assert torch.allclose(total, expected)
    assert torch.allclose(terms["selection"], ce(out["aux"]["selection"]))

    changed = copy.deepcopy(out)                        # logits at ignored pixels do not matter
    changed["out"][0, :, :3] = 100.0
    assert torch.allclose(seg_loss(changed, target, cfg)[0], total)

    cfg["loss"]["aux_weights"]["selection"] = 0.0       # weight 0: term skipped
    total0, terms0 = seg_loss(out, target, cfg)
    assert "selection" not in terms0
    assert torch.allclose(total0, ce(out["out"]) + 0.4 * ce(out["aux"]["block4"]))

    all_ignored = torch.full_like(target, 255)
    assert seg_loss(out, all_ignored, cfg)[0].item() == 0.0


def test_loss_aux_output_without_weight_names_the_key():
    out = {"out": torch.randn(1, 3, 4, 4), "aux": {"selection": torch.randn(1, 3, 4, 4)}}
    with pytest.raises(ConfigError, match=r"^loss\.aux_weights\.selection:"):
        seg_loss(out, torch.zeros(1, 4, 4, dtype=torch.long), {"loss": {"aux_weights": {"block4": 0.4}}})


# ---------------------------------------------------------------- summary command
def test_summary_toy_prints_counts_and_time(capsys):
    assert summary_main(["--preset", "toy", "--models", "fcn,glore"]) == 0
    lines = capsys.readouterr().out.splitlines()
    fcn = next(line for line in lines if line.startswith("fcn "))
    assert "200,798" in fcn and " ms" in fcn
    assert summary_main(["--models", "nope"]) == 2
