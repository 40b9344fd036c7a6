"""MetroCon²: depth rule, grid shapes, fused == per-conv reference (forward and every gradient),
state_dict interchangeability, argument errors, confidence scores."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.metrocon import GRIDS, MetroCon2, MetroConArgumentError, metrocon_depth

from helpers import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # hundreds of tiny convs: thread start-up and barriers on a shared 2-core box cost more than the work
    with torch_threads(1):
        yield


def _pair(rows, cols, c=6, depth=2, **kw):
    """A naive and a fused MetroCon2 holding identical weights (fused loads the naive state_dict)."""
    torch.manual_seed(0)
    naive = MetroCon2(c, rows, cols, depth, impl="naive", **kw)
    fused = MetroCon2(c, rows, cols, depth, impl="fused", **kw)
    fused.load_state_dict(naive.state_dict())
    if naive.confidence is not None:  # distinct scores, some negative, so the scaling is really tested
        with torch.no_grad():
            scores = torch.linspace(-1.5, 2.0, naive.confidence.numel())
            naive.confidence.copy_(scores)
            fused.confidence.copy_(scores)
    return naive, fused


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    err = (a - b).abs().max()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} * {scale:.3g}"


def _grads(module, x, grad_out):
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(grad_out)
    return y.detach(), x.grad


def test_depth_rule_reproduces_table2_and_named_grids():
    assert metrocon_depth(3, 3) == 144
    assert metrocon_depth(9, 9) == 16
    assert metrocon_depth(18, 18) == 4
    assert list(GRIDS["aspp3x3"]) == [6, 12, 18]
    assert list(GRIDS["dense9x9"]) == list(range(1, 10))
    assert list(GRIDS["dense18x18"]) == list(range(1, 19))
    for name, depth in (("aspp3x3", 144), ("dense9x9", 16), ("dense18x18", 4)):
        g = GRIDS[name]
        mod = MetroCon2(8, g, g, impl="naive")
        assert mod.depth == depth and mod.out_channels == len(g) ** 2 * depth == 1296
    assert metrocon_depth(60, 60) == 1  # never 0 for huge grids


def test_rectangular_grid_output_channels_and_dilations():
    rows, cols = [1, 2, 3], [1, 2, 3, 4, 5]
    for impl in ("naive", "fused"):
        mod = MetroCon2(8, rows, cols, impl=impl)
        assert mod.depth == metrocon_depth(3, 5) == 86
        assert mod.out_channels == 15 * 86
        assert mod.rows == (1, 2, 3) and mod.cols == (1, 2, 3, 4, 5)
        y = mod(torch.randn(2, 8, 16, 20))
        assert y.shape == (2, 15 * 86, 16, 20)
    naive = MetroCon2(8, rows, cols, impl="naive")
    # row-major (dv, dh) order: conv i*N + j has dilation (rows[i], cols[j]) and keeps the size
    assert [c.dilation for c in naive.convs] == [(dv, dh) for dv in rows for dh in cols]
    assert [c.padding for c in naive.convs] == [(dv, dh) for dv in rows for dh in cols]


def test_fused_blocks_are_the_atrous_convs_in_row_major_order():
    rows, cols = [1, 4], [2, 3, 9]
    mod = MetroCon2(5, rows, cols, depth=3, norm="none", act="none", confidence="none")
    x = torch.randn(2, 5, 10, 11)
    y = mod(x)
    for i, dv in enumerate(rows):
        for j, dh in enumerate(cols):
            k = (i * len(cols) + j) * 3
            ref = F.conv2d(x, mod.weight[k:k + 3], mod.bias[k:k + 3], padding=(dv, dh), dilation=(dv, dh))
            _close(y[:, k:k + 3], ref)


CASES = [
    # square grid with dilations up to 18 on a 12x14 map: many taps entirely in the padding
    dict(rows=list(range(1, 19)), cols=list(range(1, 19)), depth=1, size=(12, 14)),
    dict(rows=[6, 12, 18], cols=[6, 12, 18], depth=3, size=(13, 9)),
    # rectangular, unsorted, non-arithmetic, one dilation beyond the map
    dict(rows=[1, 2, 3], cols=[1, 2, 3, 4, 5], depth=2, size=(9, 12)),
    dict(rows=[3, 1, 7, 2, 20], cols=[5, 1, 9, 4], depth=2, size=(10, 8)),
]
VARIANTS = [
    dict(norm="none", act="none"),              # plain convs with bias: bias gradients are compared
    dict(),                                     # defaults: BN + ReLU, score after the activation
    dict(norm="none", confidence="before_act"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c['rows'])}x{len(c['cols'])}")
@pytest.mark.parametrize("variant", VARIANTS, ids=["plain", "bn-relu", "before-act"])
def test_fused_matches_reference_forward_and_gradients(case, variant):
    naive, fused = _pair(case["rows"], case["cols"], depth=case["depth"], **variant)
    torch.manual_seed(1)
    x = torch.randn(2, 6, *case["size"])
    grad_out = torch.randn(2, naive.out_channels, *case["size"])
    y_ref, gx_ref = _grads(naive, x, grad_out)
    y, gx = _grads(fused, x, grad_out)
    _close(y, y_ref)
    _close(gx, gx_ref)
    _close(fused.weight.grad, torch.cat([c.weight.grad for c in naive.convs]))
    _close(fused.confidence.grad, naive.confidence.grad)
    if fused.bias is not None:
        _close(fused.bias.grad, torch.cat([c.bias.grad for c in naive.convs]))


@pytest.mark.parametrize("band", [0, 1, 100])
def test_fused_band_width_does_not_change_the_result(band):
    rows = list(range(1, 10))
    torch.manual_seed(0)
    ref = MetroCon2(4, rows, rows, depth=1, norm="none", act="none", fused_band=3)
    mod = MetroCon2(4, rows, rows, depth=1, norm="none", act="none", fused_band=band)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 11, 10)
    g = torch.randn(2, ref.out_channels, 11, 10)
    y_ref, gx_ref = _grads(ref, x, g)
    y, gx = _grads(mod, x, g)
    _close(y, y_ref)
    _close(gx, gx_ref)
    _close(mod.weight.grad, ref.weight.grad)


def test_state_dict_interchangeable_both_ways():
    rows, cols = [1, 2, 5], [2, 3]
    x = torch.randn(2, 6, 9, 9)
    torch.manual_seed(3)
    for src_impl, dst_impl in (("naive", "fused"), ("fused", "naive")):
        src = MetroCon2(6, rows, cols, depth=2, impl=src_impl, norm="none").eval()
        dst = MetroCon2(6, rows, cols, depth=2, impl=dst_impl, norm="none").eval()
        with torch.no_grad():
            src.confidence.uniform_(0.5, 1.5)
        dst.load_state_dict(src.state_dict(), strict=True)
        with torch.no_grad():
            _close(dst(x), src(x))
    fused = MetroCon2(6, rows, cols, depth=2)
    assert fused.weight.shape == (6 * 2, 6, 3, 3)  # torch.cat of the per-conv weights


@pytest.mark.parametrize("kwargs, argument", [
    (dict(rows=[]), "rows"),
    (dict(cols=[1, 0, 2]), "cols"),
    (dict(rows=[1, -3]), "rows"),
    (dict(rows="123"), "rows"),
    (dict(cols=[1.5]), "cols"),
    (dict(depth=0), "depth"),
    (dict(in_channels=0), "in_channels"),
    (dict(impl="cuda"), "impl"),
    (dict(norm="gn"), "norm"),
    (dict(confidence="sigmoid"), "confidence"),
])
def test_bad_arguments_raise_one_line_errors_naming_the_argument(kwargs, argument):
    args = dict(in_channels=8, rows=[1, 2], cols=[1, 2])
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        MetroCon2(**args)
    assert isinstance(info.value, MetroConArgumentError) and info.value.argument == argument
    msg = str(info.value)
    assert msg.startswith(f"{argument}: ") and "\n" not in msg


def test_confidence_scores_receive_gradients_and_scale_their_conv():
    for impl in ("naive", "fused"):
        torch.manual_seed(0)
        mod = MetroCon2(4, [1, 2], [1, 3, 5], depth=2, impl=impl)
        assert torch.equal(mod.confidence.detach(), torch.ones(6))  # starts as the plain concatenation
        x = torch.randn(2, 4, 8, 8)
        mod(x).square().mean().backward()
        assert mod.confidence.grad is not None and (mod.confidence.grad.abs() > 0).all()
        with torch.no_grad():
            mod.confidence[4] = 0.0
            y = mod(x)
        assert y[:, 8:10].abs().max() == 0 and y[:, 6:8].abs().max() > 0
    assert MetroCon2(4, [1], [1], confidence="none").confidence is None


def test_fused_runs_under_cpu_autocast():
    naive, fused = _pair([1, 2, 7], [1, 4], depth=3, norm="none")
    x = torch.randn(2, 6, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = naive(x), fused(x)
    assert y.dtype == y_ref.dtype
    _close(y.float(), y_ref.float(), rel=3e-2)
    y.float().sum().backward()
    assert fused.weight.grad is not None and fused.weight.grad.dtype == torch.float32
