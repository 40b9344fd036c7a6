"""MetroCon² — Meshgrid Atrous Convolution Consensus (SpaceMeshLab, paper 003, Sec. 2.2).

One 3x3 atrous conv per (vertical, horizontal) dilation pair of two lists ``rows`` (vertical,
length M) and ``cols`` (horizontal, length N): conv (i, j) has dilation ``(rows[i], cols[j])`` and
padding equal to it, so the spatial size is kept. Each conv's output is scaled by its own
trainable confidence score and the M·N outputs are concatenated along channels in row-major
``(dv, dh)`` order (conv ``i*N + j`` owns channels ``[(i*N + j)*depth, (i*N + j + 1)*depth)``).

Choices where the paper is unclear (switches where they plausibly matter):

- Per-conv depth: the text says ⌊1280 / (M·N)⌉, but that gives 142 for the 3x3 grid while
  Table 2 reports 144 / 16 / 4 for the 3x3, 9x9 and 18x18 grids; ``round(1296 / (M·N))``
  (half rounded up, at least 1) reproduces all three, so that is ``metrocon_depth``.
  ``depth=`` overrides it.
- Conv → BN → ReLU per conv (``norm="bn"``, ``act="relu"``): the paper names none, but MetroCon²
  replaces ASPP, whose branches are conv-BN-ReLU in DeepLabV3+. ``norm="none"`` / ``act="none"``
  give plain convs. BN is one ``BatchNorm2d`` over the concatenation — per-channel statistics,
  so identical to one BN per conv. ``bias="auto"`` means a conv bias only when there is no BN.
- Confidence score: one scalar per conv, initialised to ``confidence_init=1.0`` (the module starts
  as the plain concatenation), multiplying that conv's output *after* the activation
  (``confidence="after_act"``): a score before BN would be normalised away, and after the ReLU it
  weighs each conv's feature map in the consensus. ``"before_act"`` (after BN, before ReLU) and
  ``"none"`` (ablation) are the alternatives.
- No projection after the concatenation: the paper forwards the concatenation to the decoder and
  sizes the depth so that it is ~1280 wide like ASPP's *pre-projection* concatenation.
  ``project=C`` adds ASPP's 1x1 conv-BN-ReLU projection to ``C`` channels.

Implementations (``impl``), numerically the same function:

- ``"naive"`` — the reference: an ``nn.ModuleList`` of M·N ``nn.Conv2d``. Slow for big grids
  (18x18 = 324 tiny convs).
- ``"fused"`` (default) — one exact custom autograd function. A 3x3 atrous conv is a sum over
  its 9 taps of a 1x1 conv of the input shifted by ``(ky·dv, kx·dh)``. Taps are grouped by
  kernel position and by a band of similar dilations; each group is one GEMM (1x1 conv) over
  only the input rows/cols that can reach an output pixel, and its result is added into a padded
  output buffer with one strided view per arithmetic run of dilations (the shift is linear in the
  dilation, so a whole run of convs is a single ``as_strided`` view). Taps that fall entirely in
  the zero padding (dilation >= feature size) are skipped, and band widths bound the work spent on
  partially padded taps (``fused_band`` = the most padding rows/cols a group may compute; default
  ``size // 16``). The backward pass is the same plan transposed (gather the views, two GEMMs per
  group). Peak extra memory is one group's GEMM output plus the padded output, never all taps.

Both implementations load each other's ``state_dict``: ``fused`` holds ``weight`` (M·N·depth,
C, 3, 3) — exactly ``torch.cat`` of the per-conv weights — and ``bias``; ``naive`` holds
``convs.{k}.weight`` / ``convs.{k}.bias``; a load hook converts either layout into the other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

DEPTH_BUDGET = 1296  # total output width the per-conv depth is sized for (9 * 144, Table 2)

# Named dilation grids of the paper (Table 2); each is the dilation list used for both rows and cols.
GRIDS: dict[str, tuple[int, ...]] = {
    "aspp3x3": (6, 12, 18),               # ASPP's rates on both axes: 9 convs of depth 144
    "dense9x9": tuple(range(1, 10)),      # {1..9}²: 81 convs of depth 16
    "dense18x18": tuple(range(1, 19)),    # {1..18}²: 324 convs of depth 4 (SpaceMeshLab default)
}

IMPLS = ("naive", "fused")
NORMS = ("bn", "none")
ACTS = ("relu", "none")
CONFIDENCE_MODES = ("after_act", "before_act", "none")


class MetroConArgumentError(ValueError):
    """A bad MetroCon2 argument; ``argument`` names it (the model builder maps it to a config key)."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(name: str, value, lo: int = 1) -> int:
    if not _is_int(value) or value < lo:
        raise MetroConArgumentError(name, f"expected an int >= {lo}, got {value!r}")
    return value


def _check_dilations(name: str, values) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise MetroConArgumentError(name, f"expected a non-empty list of dilations (ints >= 1), got {values!r}")
    values = tuple(values)
    if not values:
        raise MetroConArgumentError(name, "expected a non-empty list of dilations (ints >= 1), got []")
    for v in values:
        if not _is_int(v) or v < 1:
            raise MetroConArgumentError(name, f"every dilation must be an int >= 1, got {v!r} in {list(values)}")
    return values


def _check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise MetroConArgumentError(name, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def metrocon_depth(m: int, n: int) -> int:
    """Per-conv depth for an M x N grid: round(1296 / (M·N)), half up, at least 1 (144 / 16 / 4 in Table 2)."""
    _check_int("rows", m)
    _check_int("cols", n)
    return max(1, math.floor(DEPTH_BUDGET / (m * n) + 0.5))


# ----------------------------------------------------------------------------------------------
# Fused implementation: a plan per feature size, and one autograd function executing it.

@dataclass(frozen=True)
class _Run:
    """Convs whose grid index and dilation step arithmetically along both axes, fed from one input box.

    Their contributions to the padded output are a single ``as_strided`` view (the shift of every
    conv is linear in its position in the run).
    """
    r0: int  # rows: first position in the group's row list, count, grid index, index step,
    m: int   # first dilation, dilation step
    i0: int
    si: int
    a: int
    sa: int
    q0: int  # cols: the same
    n: int
    j0: int
    sj: int
    b: int
    sb: int
    y0: int  # the input box [y0, y1) x [x0, x1) whose GEMM results the run uses
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class _Group:
    """Taps at one kernel position (ky, kx) for a band of convs: one GEMM over a band of the input.

    ``axis`` 0: the GEMM runs over input rows [lo, hi) and all cols (input held as (C, H, B, W), so
    the band is a strided view); ``axis`` 1: over input cols [lo, hi) (input held as (C, W, B, H)).
    """
    ky: int
    kx: int
    axis: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    lo: int
    hi: int
    channels: tuple[int, ...]  # output channels (i*N + j)*D + d in (row, col, d) order
    span: tuple[int, int] | None  # (start, stop) when ``channels`` is one contiguous range
    runs: tuple[_Run, ...]


@dataclass(frozen=True)
class _Plan:
    groups: tuple[_Group, ...]  # the centre tap first: it covers the whole output
    pad: tuple[int, int, int, int]  # top, bottom, left, right of the padded output buffer
    shape: tuple[int, int, int, int, int, int]  # M, N, D, H, W, C
    workspace: int  # elements of the largest GEMM result


def _bands(dils: Sequence[int], k: int, size: int, band: int) -> list[tuple[list[int], int, int]]:
    """Split the indices of ``dils`` whose tap ``k`` reaches the map into bands of similar dilation.

    Returns ``(indices, lo, hi)`` per band, [lo, hi) being the input range the band needs. A band
    spans at most ``band`` + 1 dilation values, so it reads at most ``band`` rows that only meet the
    zero padding. Dilations >= size are dropped for k != 0: that tap sees nothing but padding.
    """
    active = [i for i, d in enumerate(dils) if abs(k) * d < size]
    if k == 0:
        return [(active, 0, size)]
    out: list[tuple[list[int], int]] = []
    for d, i in sorted((dils[i], i) for i in active):
        if not out or d - out[-1][1] > band:
            out.append(([], d))
        out[-1][0].append(i)
    # tap +1 reads input y + d, so only input rows >= d reach an output; tap -1 only rows < size - d
    return [(sorted(idx), lo, size) if k > 0 else (sorted(idx), 0, size - lo) for idx, lo in out]


def _runs(bands: Sequence[tuple[list[int], int, int]], dils: Sequence[int]):
    """Maximal arithmetic runs (grid index and dilation) inside each band, positions counted across bands.

    Yields ``(pos, length, i0, index_step, d0, dilation_step, lo, hi)``.
    """
    base = 0
    for idx, lo, hi in bands:
        p = 0
        while p < len(idx):
            length, si, sd = 1, 1, 0
            if p + 1 < len(idx):
                si, sd = idx[p + 1] - idx[p], dils[idx[p + 1]] - dils[idx[p]]
                length = 2
                while (p + length < len(idx) and idx[p + length] - idx[p + length - 1] == si
                       and dils[idx[p + length]] - dils[idx[p + length - 1]] == sd):
                    length += 1
            yield base + p, length, idx[p], si, dils[idx[p]], sd, lo, hi
            p += length
        base += len(idx)


def _build_plan(rows: Sequence[int], cols: Sequence[int], depth: int, h: int, w: int, c: int,
                band_h: int, band_w: int, batch: int) -> _Plan:
    m, n = len(rows), len(cols)
    groups = []
    pt = pb = pl = pr = 0
    workspace = 0
    for ky, kx in [(0, 0)] + [(ky, kx) for ky in (-1, 0, 1) for kx in (-1, 0, 1) if (ky, kx) != (0, 0)]:
        row_bands = _bands(rows, ky, h, band_h)
        col_bands = _bands(cols, kx, w, band_w)
        if not row_bands or not col_bands or not row_bands[0][0] or not col_bands[0][0]:
            continue
        # One GEMM per band of the off-centre axis (rows first); the other axis's bands only bound
        # which part of the GEMM result each run reads (and so the output padding).
        axis = 1 if (ky == 0 and kx != 0) else 0
        cuts = [[b] for b in row_bands] if axis == 0 else [[b] for b in col_bands]
        for cut in cuts:
            rb, cb = (cut, col_bands) if axis == 0 else (row_bands, cut)
            row_idx = [i for idx, _, _ in rb for i in idx]
            col_idx = [j for idx, _, _ in cb for j in idx]
            runs = []
            for r0, rm, i0, si, a, sa, y0, y1 in _runs(rb, rows):
                for q0, cn, j0, sj, b, sb, x0, x1 in _runs(cb, cols):
                    runs.append(_Run(r0, rm, i0, si, a, sa, q0, cn, j0, sj, b, sb, y0, y1, x0, x1))
                    # input row y' lands on output row y' - ky*dv: the padded buffer must hold it
                    for dv in (a, a + (rm - 1) * sa):
                        pt, pb = max(pt, ky * dv - y0), max(pb, y1 - 1 - ky * dv - (h - 1))
                    for dh in (b, b + (cn - 1) * sb):
                        pl, pr = max(pl, kx * dh - x0), max(pr, x1 - 1 - kx * dh - (w - 1))
            channels = tuple((i * n + j) * depth + d for i in row_idx for j in col_idx for d in range(depth))
            span = ((channels[0], channels[-1] + 1)
                    if channels == tuple(range(channels[0], channels[-1] + 1)) else None)
            lo, hi = (cut[0][1], cut[0][2])
            workspace = max(workspace, len(channels) * (hi - lo) * batch * (w if axis == 0 else h))
            groups.append(_Group(ky, kx, axis, tuple(row_idx), tuple(col_idx), lo, hi, channels, span,
                                 tuple(runs)))
    return _Plan(tuple(groups), (pt, pb, pl, pr), (m, n, depth, h, w, c), workspace)


def _views(plan: _Plan, g: _Group, buf: torch.Tensor, part: torch.Tensor):
    """Yield (view of the padded output ``buf``, view of the group's GEMM result ``part``) per run.

    ``buf`` is (M·N·D, Hp, B, Wp); ``part`` is (rows, cols, D, band, B, other) where (band, other)
    are the (y, x) input coordinates for axis 0 and (x, y) for axis 1, band relative to ``g.lo``.
    """
    _, n, d, _, _, _ = plan.shape
    pt, _, pl, _ = plan.pad
    _, hp, bsz, wp = buf.shape
    s_w, s_b, s_h = 1, wp, bsz * wp
    s_d = hp * s_h
    s_n, s_m = d * s_d, n * d * s_d
    for r in g.runs:
        lead_size = (r.m, r.n, d)
        lead_stride = (r.si * s_m - g.ky * r.sa * s_h, r.sj * s_n - g.kx * r.sb * s_w, s_d)
        block = part[r.r0:r.r0 + r.m, r.q0:r.q0 + r.n]
        if g.axis == 0:
            size, stride = lead_size + (r.y1 - r.y0, bsz, r.x1 - r.x0), lead_stride + (s_h, s_b, s_w)
            block = block[:, :, :, r.y0 - g.lo:r.y1 - g.lo, :, r.x0:r.x1]
        else:
            size, stride = lead_size + (r.x1 - r.x0, bsz, r.y1 - r.y0), lead_stride + (s_w, s_b, s_h)
            block = block[:, :, :, r.x0 - g.lo:r.x1 - g.lo, :, r.y0:r.y1]
        offset = (buf.storage_offset() + r.i0 * s_m + r.j0 * s_n
                  + (pt + r.y0 - g.ky * r.a) * s_h + (pl + r.x0 - g.kx * r.b) * s_w)
        yield buf.as_strided(size, stride, offset), block


def _unread(g: _Group, part: torch.Tensor):
    """Views of ``part`` that no run reads (input the run's box excludes): zero them in the backward."""
    for r in g.runs:
        block = part[r.r0:r.r0 + r.m, r.q0:r.q0 + r.n]
        z0, z1, size = (r.x0, r.x1, part.shape[-1]) if g.axis == 0 else (r.y0, r.y1, part.shape[-1])
        if z0 > 0:
            yield block[..., :z0]
        if z1 < size:
            yield block[..., z1:]


def _tap_weight(wt: torch.Tensor, g: _Group, idx: torch.Tensor) -> torch.Tensor:
    """The group's (K_g, C) weight rows from ``wt`` = weight as (3, 3, K, C)."""
    tap = wt[g.ky + 1, g.kx + 1]
    return tap[g.span[0]:g.span[1]] if g.span is not None else tap.index_select(0, idx)


def _zero_margins(buf: torch.Tensor, pad: tuple[int, int, int, int]) -> None:
    """Zero a (K, Hp, B, Wp) buffer outside its (K, H, B, W) interior."""
    pt, pb, pl, pr = pad
    hp, wp = buf.shape[1], buf.shape[3]
    buf[:, :pt].zero_()
    buf[:, hp - pb:].zero_()
    buf[:, pt:hp - pb, :, :pl].zero_()
    buf[:, pt:hp - pb, :, wp - pr:].zero_()


class _FusedMetroConConv(torch.autograd.Function):
    """All M·N atrous convs of MetroCon² (weights + optional bias) in one exact pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan: _Plan, idx: list[torch.Tensor]):
        m, n, d, h, w, c = plan.shape
        pt, pb, pl, pr = plan.pad
        bsz, k = x.shape[0], m * n * d
        # Channel-first layouts make each band of input rows (cols) one strided GEMM operand, no copy.
        xs = [x.permute(1, 2, 0, 3).contiguous()]  # (C, H, B, W)
        if any(g.axis == 1 for g in plan.groups):
            xs.append(x.permute(1, 3, 0, 2).contiguous())  # (C, W, B, H)
        wt = weight.permute(2, 3, 0, 1).contiguous()  # (3, 3, K, C): a tap's rows are contiguous
        buf = x.new_empty(k, h + pt + pb, bsz, w + pl + pr)
        _zero_margins(buf, plan.pad)
        ws = x.new_empty(plan.workspace)  # one buffer for every GEMM result: no allocation churn
        for gi, (g, ch) in enumerate(zip(plan.groups, idx)):
            xg = xs[g.axis][:, g.lo:g.hi]
            part = ws[:len(ch) * xg[0].numel()].view(len(ch), -1)
            torch.mm(_tap_weight(wt, g, ch), xg.reshape(c, -1), out=part)
            part = part.view(len(g.rows), len(g.cols), d, *xg.shape[1:])
            for dst, src in _views(plan, g, buf, part):
                # the centre tap (first) covers the whole interior exactly once: it initialises it
                dst.copy_(src) if gi == 0 else dst.add_(src)
        out = torch.empty(bsz, k, h, w, dtype=x.dtype, device=x.device)
        out.copy_(buf[:, pt:pt + h, :, pl:pl + w].permute(2, 0, 1, 3))
        if bias is not None:
            out.add_(bias.view(1, -1, 1, 1))
        ctx.plan, ctx.idx, ctx.has_bias = plan, idx, bias is not None
        ctx.save_for_backward(*xs, wt)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        *xs, wt = ctx.saved_tensors
        plan = ctx.plan
        m, n, d, h, w, c = plan.shape
        pt, pb, pl, pr = plan.pad
        bsz, k = grad_out.shape[:2]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(grad_out.device.type, enabled=False):
            gbuf = grad_out.new_empty(k, h + pt + pb, bsz, w + pl + pr)
            _zero_margins(gbuf, plan.pad)
            gbuf[:, pt:pt + h, :, pl:pl + w].copy_(grad_out.permute(1, 2, 0, 3))
            gxs = [torch.zeros_like(t) for t in xs] if need_x else None
            gwt = torch.zeros_like(wt) if need_w else None
            ws = grad_out.new_empty(plan.workspace)
            for g, ch in zip(plan.groups, ctx.idx):
                xg = xs[g.axis][:, g.lo:g.hi]
                part = ws[:len(ch) * xg[0].numel()].view(len(g.rows), len(g.cols), d, *xg.shape[1:])
                for src, dst in _views(plan, g, gbuf, part):
                    dst.copy_(src)
                for hole in _unread(g, part):
                    hole.zero_()
                part = part.view(len(ch), -1)
                if need_w:
                    tap = gwt[g.ky + 1, g.kx + 1]
                    if g.span is not None:
                        torch.mm(part, xg.reshape(c, -1).t(), out=tap[g.span[0]:g.span[1]])
                    else:
                        tap.index_copy_(0, ch, torch.mm(part, xg.reshape(c, -1).t()))
                if need_x:  # accumulate straight into the band of the input-gradient buffer
                    band = gxs[g.axis][:, g.lo:g.hi].view(c, -1)
                    torch.addmm(band, _tap_weight(wt, g, ch).t(), part, out=band)
            grad_x = grad_w = grad_b = None
            if need_x:
                grad_x = gxs[0].permute(2, 0, 1, 3).contiguous()
                if len(gxs) > 1:
                    grad_x.add_(gxs[1].permute(2, 0, 3, 1))
            if need_w:
                grad_w = gwt.permute(2, 3, 0, 1).contiguous()
            if need_b and ctx.has_bias:
                grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


# ----------------------------------------------------------------------------------------------

class MetroCon2(nn.Module):
    """MetroCon²: M x N atrous 3x3 convs (dilation (rows[i], cols[j])), confidence-scaled, concatenated.

    Input (B, in_channels, H, W) -> output (B, out_channels, H, W); ``out_channels`` is
    ``len(rows) * len(cols) * depth`` (or ``project`` when a projection is asked for).
    """

    def __init__(self, in_channels: int, rows: Sequence[int], cols: Sequence[int], depth: int | None = None,
                 impl: str = "fused", *, bias: bool | str = "auto", norm: str = "bn", act: str = "relu",
                 confidence: str = "after_act", confidence_init: float = 1.0, project: int | None = None,
                 fused_band: int | None = None):
        super().__init__()
        self.in_channels = _check_int("in_channels", in_channels)
        self.rows = _check_dilations("rows", rows)
        self.cols = _check_dilations("cols", cols)
        m, n = len(self.rows), len(self.cols)
        self.depth = metrocon_depth(m, n) if depth is None else _check_int("depth", depth)
        self.impl = _check_choice("impl", impl, IMPLS)
        self.norm_kind = _check_choice("norm", norm, NORMS)
        self.act_kind = _check_choice("act", act, ACTS)
        self.confidence_mode = _check_choice("confidence", confidence, CONFIDENCE_MODES)
        if bias == "auto":
            bias = norm == "none"
        if not isinstance(bias, bool):
            raise MetroConArgumentError("bias", f"expected true, false or 'auto', got {bias!r}")
        if isinstance(confidence_init, bool) or not isinstance(confidence_init, (int, float)):
            raise MetroConArgumentError("confidence_init", f"expected a number, got {confidence_init!r}")
        if project is not None:
            _check_int("project", project)
        if fused_band is not None:
            _check_int("fused_band", fused_band, lo=0)
        self.fused_band = fused_band
        self.has_bias = bias
        k = m * n * self.depth
        self.concat_channels = k
        self.out_channels = project if project is not None else k

        if self.impl == "naive":
            self.convs = nn.ModuleList(
                nn.Conv2d(in_channels, self.depth, 3, padding=(dv, dh), dilation=(dv, dh), bias=bias)
                for dv in self.rows for dh in self.cols)
        else:
            # Same init as M·N nn.Conv2d (fan-in C·9 per conv), stacked.
            self.weight = nn.Parameter(torch.empty(k, in_channels, 3, 3))
            self.bias = nn.Parameter(torch.empty(k)) if bias else None
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(in_channels * 9)
                nn.init.uniform_(self.bias, -bound, bound)
        self.confidence = (nn.Parameter(torch.full((m * n,), float(confidence_init)))
                           if self.confidence_mode != "none" else None)
        self.norm = nn.BatchNorm2d(k) if norm == "bn" else nn.Identity()
        self.act = nn.ReLU() if act == "relu" else nn.Identity()
        self.project = (nn.Sequential(nn.Conv2d(k, project, 1, bias=False), nn.BatchNorm2d(project), nn.ReLU())
                        if project is not None else None)
        self._plans: dict = {}
        self.register_load_state_dict_pre_hook(_convert_layout)

    # -- the convs ------------------------------------------------------------------------------
    def conv_weight(self) -> torch.Tensor:
        """All conv weights as one (M·N·depth, C, 3, 3) tensor, whichever the implementation."""
        if self.impl == "naive":
            return torch.cat([c.weight for c in self.convs])
        return self.weight

    def _naive_convs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)

    def _plan(self, x: torch.Tensor):
        h, w = x.shape[-2:]
        key = (x.shape[0], h, w, x.device)
        if key not in self._plans:
            band_h = self.fused_band if self.fused_band is not None else max(1, h // 16)
            band_w = self.fused_band if self.fused_band is not None else max(1, w // 16)
            plan = _build_plan(self.rows, self.cols, self.depth, h, w, self.in_channels, band_h, band_w,
                               x.shape[0])
            idx = [torch.tensor(g.channels, dtype=torch.long, device=x.device) for g in plan.groups]
            self._plans[key] = (plan, idx)
        return self._plans[key]

    def _fused_convs(self, x: torch.Tensor) -> torch.Tensor:
        plan, idx = self._plan(x)
        weight, bias = self.weight, self.bias
        dev = x.device.type
        if torch.is_autocast_enabled(dev):  # run the GEMMs in the autocast dtype, like nn.Conv2d would
            dt = torch.get_autocast_dtype(dev)
            with torch.autocast(dev, enabled=False):
                return _FusedMetroConConv.apply(x.to(dt), weight.to(dt), None if bias is None else bias.to(dt),
                                                plan, idx)
        if x.dtype != weight.dtype:
            raise TypeError(f"MetroCon2: input dtype {x.dtype} differs from weight dtype {weight.dtype}")
        return _FusedMetroConConv.apply(x, weight, bias, plan, idx)

    # -- the module -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"MetroCon2: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        y = self._naive_convs(x) if self.impl == "naive" else self._fused_convs(x)
        y = self.norm(y)
        if self.confidence is not None:
            score = self.confidence.to(y.dtype).repeat_interleave(self.depth).view(1, -1, 1, 1)
        if self.confidence_mode == "before_act":
            y = y * score
        y = self.act(y)
        if self.confidence_mode == "after_act":
            y = y * score
        if self.project is not None:
            y = self.project(y)
        return y

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, rows={list(self.rows)}, cols={list(self.cols)}, "
                f"depth={self.depth}, out_channels={self.out_channels}, impl={self.impl!r}, "
                f"norm={self.norm_kind!r}, act={self.act_kind!r}, confidence={self.confidence_mode!r}")


def _convert_layout(module: MetroCon2, state_dict, prefix, local_metadata, strict, missing_keys,
                    unexpected_keys, error_msgs) -> None:
    """Let either implementation load the other's state_dict (stacked ``weight`` <-> ``convs.{k}.*``)."""
    count, depth = len(module.rows) * len(module.cols), module.depth
    if module.impl == "fused" and f"{prefix}convs.0.weight" in state_dict and f"{prefix}weight" not in state_dict:
        for name in ("weight", "bias"):
            keys = [f"{prefix}convs.{k}.{name}" for k in range(count)]
            if all(key in state_dict for key in keys):
                state_dict[f"{prefix}{name}"] = torch.cat([state_dict.pop(key) for key in keys])
    elif module.impl == "naive" and f"{prefix}weight" in state_dict and f"{prefix}convs.0.weight" not in state_dict:
        for name in ("weight", "bias"):
            stacked = state_dict.pop(f"{prefix}{name}", None)
            if stacked is not None:
                for k, part in enumerate(torch.split(stacked, depth)):
                    state_dict[f"{prefix}convs.{k}.{name}"] = part
