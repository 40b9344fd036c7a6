"""SpaceMeshLab (paper 003): the toy model trains, every Table 1/2 switch builds and runs, bad configs
fail with one line naming the key. Small on purpose: toy widths, 64-128 px inputs, batch 2."""
from __future__ import annotations

import copy

import pytest
import torch

from models import ConfigError, build_model, model_names, preset, seg_loss
from models.spam import ChannelContextAttention, SpatialContextAttention, shuffle_steps

from helpers import torch_threads



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # many small ops: on a shared 2-core box, 2 intra-op threads spin on each other's barriers
    # (measured 10-50x slower under load)
    with torch_threads(1):
        yield


def toy(**model) -> dict:
    cfg = preset("spacemeshlab", "toy")
    for key, value in model.items():
        node = cfg["model"]
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def train_step(cfg: dict, size=(64, 64)) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = torch.randn(2, 3, *size)
    target = torch.randint(0, cfg["model"]["num_classes"], (2, *size))
    out = model(x)
    loss, _ = seg_loss(out, target, cfg)
    loss.backward()
    assert torch.isfinite(loss)
    return model, out


def test_registered_with_both_presets():
    assert "spacemeshlab" in model_names()
    assert preset("spacemeshlab", "paper")["loss"]["aux_weights"] == {"block4": 0.4}


@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_toy_trains(size):
    cfg = toy()
    model, out = train_step(cfg, size)
    assert out["out"].shape == (2, 19, *size)
    assert set(out["aux"]) == {"block4"} and out["aux"]["block4"].shape == (2, 19, *size)
    # a few SGD steps on one batch lower the loss: the step is a real training step
    torch.manual_seed(1)
    x, y = torch.randn(2, 3, *size), torch.randint(0, 19, (2, *size))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss, _ = seg_loss(model(x), y, cfg)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_every_parameter_gets_a_finite_nonzero_gradient():
    # zero_init off: with it on, the convs in front of the zeroed BN weights get an exact 0 on step 1
    cfg = toy(**{"spam_options.zero_init": False})
    model, _ = train_step(cfg, (64, 128))
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    names = [n for n, _ in model.named_parameters()]
    for part in ("context.metrocon.confidence", "spam_blocks.block1", "exchanges.block5.up", "exchanges.block5.down",
                 "context_up", "spam_down"):
        assert any(n.startswith(part) for n in names), part
    attention = [m for m in model.modules() if isinstance(m, (SpatialContextAttention, ChannelContextAttention))]
    assert attention and all(p.grad.abs().sum() > 0 for m in attention for p in m.parameters())


def test_zero_init_exchange_keeps_a_pretrained_backbone_intact():
    """At initialisation SpaM adds exactly 0 to the backbone, so block 4 (aux head) matches the plain model."""
    torch.manual_seed(0)
    with_spam = build_model(toy()).eval()
    without = build_model(toy(spam=False)).eval()
    shared = {k: v for k, v in with_spam.state_dict().items() if k.startswith(("backbone.", "aux_block4."))}
    without.load_state_dict(shared, strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = with_spam(x)["aux"]["block4"], without(x)["aux"]["block4"]
    assert torch.equal(a, b)


# Table 1 (SpaM ablation, ASPP context) and Table 2 (context ablation, SpaM + SCA + CCA).
TABLE_ROWS = {
    "t1_deeplabv3plus": dict(spam=False, context="aspp"),
    "t1_spam_no_attention": dict(spam=True, sca_cca=False, context="aspp"),
    "t1_spam_sca_cca": dict(spam=True, sca_cca=True, context="aspp"),
    "t2_metrocon_6_12_18": dict(context="metrocon", **{"metrocon.grid": "aspp3x3", "metrocon.depth": None}),
    "t2_metrocon_1_to_9": dict(context="metrocon", **{"metrocon.grid": "dense9x9", "metrocon.depth": None}),
    "t2_metrocon_1_to_18": dict(context="metrocon", **{"metrocon.grid": "dense18x18", "metrocon.depth": None}),
    # the other corners of the switches
    "metrocon_without_spam": dict(spam=False, context="metrocon"),
    "metrocon_spam_no_attention": dict(spam=True, sca_cca=False, context="metrocon"),
}


@pytest.mark.parametrize("row", sorted(TABLE_ROWS))
def test_table_rows_build_and_run(row):
    model, out = train_step(toy(**TABLE_ROWS[row]))
    assert out["out"].shape == (2, 19, 64, 64)
    has_attention = any(isinstance(m, SpatialContextAttention) for m in model.modules())
    cfg = TABLE_ROWS[row]
    assert has_attention == (cfg.get("spam", True) and cfg.get("sca_cca", True))
    assert hasattr(model, "exchanges") == cfg.get("spam", True)


def test_table2_grid_depths_follow_the_paper():
    for grid, depth, convs in (("aspp3x3", 144, 9), ("dense9x9", 16, 81), ("dense18x18", 4, 324)):
        cfg = toy(**{"metrocon.grid": grid, "metrocon.depth": None})
        with torch.device("meta"):
            mc = build_model(cfg).context.metrocon
        assert (mc.depth, len(mc.rows) * len(mc.cols)) == (depth, convs)


def test_rectangular_grid_and_grid_name_precedence():
    model, out = train_step(toy(**{"metrocon.rows": [1, 2], "metrocon.cols": [1, 3, 5], "metrocon.depth": 3}),
                            (64, 128))
    mc = model.context.metrocon
    assert (mc.rows, mc.cols, mc.concat_channels) == ((1, 2), (1, 3, 5), 2 * 3 * 3)
    assert out["out"].shape == (2, 19, 64, 128)
    # a sampled grid name wins over the base config's rows/cols
    with torch.device("meta"):
        mc = build_model(toy(**{"metrocon.grid": "aspp3x3", "metrocon.rows": [1]})).context.metrocon
    assert mc.rows == mc.cols == (6, 12, 18)
    # ... and so does a [rows, cols] pair or one list (what a categorical search choice can hold)
    with torch.device("meta"):
        pair = build_model(toy(**{"metrocon.grid": [[1, 2], [1, 2, 4, 8]]})).context.metrocon
        single = build_model(toy(**{"metrocon.grid": [1, 5]})).context.metrocon
    assert (pair.rows, pair.cols, single.rows, single.cols) == ((1, 2), (1, 2, 4, 8), (1, 5), (1, 5))


def test_null_means_default():
    cfg = toy(spam=None, sca_cca=None, context=None, **{"metrocon.rows": None, "metrocon.impl": None,
                                                       "spam_options.stages": None, "spam_options.zero_init": None})
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.spam and list(model.exchanges) == ["block1", "block2", "block4", "block5"]
    assert model.context.metrocon.rows == tuple(range(1, 19)) and model.context.metrocon.cols == (1, 2, 3)


def test_exchange_stages_and_shuffle_steps():
    assert shuffle_steps(16, 4) == [4, 4] and shuffle_steps(8, 4) == [4, 2] and shuffle_steps(4, 4) == [4]
    with torch.device("meta"):
        model = build_model(toy())
    assert list(model.exchanges) == ["block1", "block2", "block4", "block5"]  # block 3 omitted (paper)
    assert model.exchanges["block5"].up.steps == [4, 2]
    model, out = train_step(toy(**{"spam_options.stages": ["block3", "block5"], "backbone.output_stride": 16}))
    assert list(model.exchanges) == ["block3", "block5"] and model.exchanges["block5"].up.steps == [4, 4]


def test_input_size_must_match_the_output_stride_unless_padding():
    model = build_model(toy()).eval()
    assert model.size_divisibility == 8
    with pytest.raises(ConfigError, match=r"^model\.spam_options\.pad_input: input 60x64 .* multiple of 8"):
        model(torch.randn(1, 3, 60, 64))
    padded = build_model(toy(**{"spam_options.pad_input": True})).eval()
    with torch.no_grad():
        out = padded(torch.randn(1, 3, 60, 70))
    assert out["out"].shape == (1, 19, 60, 70) and out["aux"]["block4"].shape == (1, 19, 60, 70)
    # without SpaM any size works (DeepLabV3+ decoder, bilinear only)
    plain = build_model(toy(spam=False)).eval()
    with torch.no_grad():
        assert plain(torch.randn(2, 3, 60, 70))["out"].shape == (2, 19, 60, 70)


def test_paper_config_constructs(capsys):
    cfg = preset("spacemeshlab", "paper")
    model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    mc = model.context.metrocon
    with capsys.disabled():
        print(f"\nspacemeshlab paper preset: {n:,} parameters ({backbone:,} backbone)")
    assert (model.backbone.depth, model.backbone.output_stride, model.backbone.width) == (101, 16, 64)
    assert (len(mc.rows), len(mc.cols), mc.depth, mc.concat_channels) == (18, 18, 4, 1296)
    assert 42_000_000 < backbone < 43_000_000 and n > backbone


BAD = [
    ({"metrocon.rows": [0, 1, 2]}, "model.metrocon.rows"),
    ({"metrocon.cols": [1, -3]}, "model.metrocon.cols"),
    ({"metrocon.depth": 0}, "model.metrocon.depth"),
    ({"metrocon.grid": "dense7x7"}, "model.metrocon.grid"),
    ({"metrocon.grid": [[1, 2], [0, 3]]}, "model.metrocon.grid"),
    ({"metrocon.impl": "cuda"}, "model.metrocon.impl"),
    ({"metrocon.confidence": "sometimes"}, "model.metrocon.confidence"),
    ({"context": "ppm"}, "model.context"),
    ({"spam": "yes"}, "model.spam"),
    ({"sca_cca": 1}, "model.sca_cca"),
    ({"spam_options.heads": 3}, "model.spam_options.heads"),
    ({"spam_options.stages": ["block6"]}, "model.spam_options.stages"),
    ({"spam_options.decoder_stride": 3}, "model.spam_options.decoder_stride"),
    ({"spam_options.scale_factor": 1}, "model.spam_options.scale_factor"),
    ({"spam_options.sca_kernel": 4}, "model.spam_options.sca_kernel"),
    ({"aspp.rates": [12, 0]}, "model.aspp.rates"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[k for _, k in BAD])
def test_bad_config_is_one_line_naming_the_key(override, key):
    cfg = toy(**override)
    if "aspp" in key:
        cfg["model"]["context"] = "aspp"
    with pytest.raises(ConfigError) as err:
        with torch.device("meta"):
            build_model(copy.deepcopy(cfg))
    msg = str(err.value)
    assert msg.startswith(key + ":") and "\n" not in msg, msg
