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
  ``size // 8``). The backward pass is the same plan transposed (gather the views, two GEMMs per
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
import torch.nn.functional as F

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
    """An arithmetic run of a group's rows x cols: one strided view into the padded output."""
    r0: int  # first row / col position inside the group's grid, and how many
    m: int
    q0: int
    n: int
    i0: int  # conv-grid row index of the first row, index step, its dilation, dilation step
    si: int
    a: int
    sa: int
    j0: int
    sj: int
    b: int
    sb: int


@dataclass(frozen=True)
class _Group:
    """Taps at one kernel position (ky, kx) for a band of rows x a band of cols: one GEMM."""
    ky: int
    kx: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    y0: int  # input region the GEMM runs over
    y1: int
    x0: int
    x1: int
    channels: tuple[int, ...]  # output channels (i*N + j)*D + d in (row, col, d) order
    runs: tuple[_Run, ...]


@dataclass(frozen=True)
class _Plan:
    groups: tuple[_Group, ...]
    pad: tuple[int, int, int, int]  # top, bottom, left, right of the padded output buffer
    shape: tuple[int, int, int, int, int, int]  # M, N, D, H, W, C


def _bands(dils: Sequence[int], k: int, size: int, band: int) -> list[tuple[list[int], int, int]]:
    """Split the indices of ``dils`` whose tap ``k`` can reach the map into bands.

    Returns ``(indices, lo, hi)`` per band, where [lo, hi) is the input range the band's GEMM needs.
    """
    if k == 0:
        return [(list(range(len(dils))), 0, size)]
    active = sorted((d, i) for i, d in enumerate(dils) if d < size)  # d >= size: only padding
    out: list[tuple[list[int], int, int]] = []
    cur: list[int] = []
    lo = 0
    for d, i in active:
        if cur and d - lo > band:
            out.append((cur, lo, 0))
            cur = []
        if not cur:
            lo = d
        cur.append(i)
    if cur:
        out.append((cur, lo, 0))
    # tap +1 reads input y + d, so only input >= d reaches an output; tap -1 only input < size - d
    return [(idx, lo, size) if k > 0 else (idx, 0, size - lo) for idx, lo, _ in out]


def _runs(idx: Sequence[int], dils: Sequence[int]) -> list[tuple[int, int, int, int, int, int]]:
    """Maximal runs of ``idx`` whose grid index and dilation both step arithmetically.

    Returns ``(pos, length, i0, index_step, d0, dilation_step)`` per run.
    """
    runs = []
    p = 0
    while p < len(idx):
        length, si, sd = 1, 1, 0
        if p + 1 < len(idx) and idx[p + 1] > idx[p]:
            si, sd = idx[p + 1] - idx[p], dils[idx[p + 1]] - dils[idx[p]]
            length = 2
            while (p + length < len(idx) and idx[p + length] - idx[p + length - 1] == si
                   and dils[idx[p + length]] - dils[idx[p + length - 1]] == sd):
                length += 1
        runs.append((p, length, idx[p], si, dils[idx[p]], sd))
        p += length
    return runs


def _build_plan(rows: Sequence[int], cols: Sequence[int], depth: int, h: int, w: int, c: int,
                band_h: int, band_w: int) -> _Plan:
    m, n = len(rows), len(cols)
    groups = []
    pt = pb = pl = pr = 0
    for ky in (-1, 0, 1):
        for row_idx, y0, y1 in _bands(rows, ky, h, band_h):
            for kx in (-1, 0, 1):
                for col_idx, x0, x1 in _bands(cols, kx, w, band_w):
                    # target row in the unpadded output is y' - ky*dv for input row y' in [y0, y1)
                    for i in row_idx:
                        pt = max(pt, -(y0 - ky * rows[i]))
                        pb = max(pb, (y1 - 1 - ky * rows[i]) - (h - 1))
                    for j in col_idx:
                        pl = max(pl, -(x0 - kx * cols[j]))
                        pr = max(pr, (x1 - 1 - kx * cols[j]) - (w - 1))
                    channels = tuple((i * n + j) * depth + d for i in row_idx for j in col_idx for d in range(depth))
                    runs = tuple(_Run(r0, rm, q0, cn, i0, si, a, sa, j0, sj, b, sb)
                                 for r0, rm, i0, si, a, sa in _runs(row_idx, rows)
                                 for q0, cn, j0, sj, b, sb in _runs(col_idx, cols))
                    groups.append(_Group(ky, kx, tuple(row_idx), tuple(col_idx), y0, y1, x0, x1, channels, runs))
    return _Plan(tuple(groups), (pt, pb, pl, pr), (m, n, depth, h, w, c))


def _views(plan: _Plan, g: _Group, buf: torch.Tensor, part: torch.Tensor):
    """Yield (view of the padded output ``buf``, view of the group block ``part``) for every run."""
    m, n, d, h, w, _ = plan.shape
    pt, _, pl, _ = plan.pad
    bsz, _, _, _, hp, wp = buf.shape
    s_h, s_d = wp, hp * wp
    s_n, s_m = d * s_d, n * d * s_d
    hr, wr = g.y1 - g.y0, g.x1 - g.x0
    for r in g.runs:
        size = (bsz, r.m, r.n, d, hr, wr)
        stride = (buf.stride(0), r.si * s_m - g.ky * r.sa * s_h, r.sj * s_n - g.kx * r.sb, s_d, s_h, 1)
        offset = (buf.storage_offset() + r.i0 * s_m + r.j0 * s_n
                  + (pt + g.y0 - g.ky * r.a) * s_h + (pl + g.x0 - g.kx * r.b))
        yield buf.as_strided(size, stride, offset), part[:, r.r0:r.r0 + r.m, r.q0:r.q0 + r.n]


def _region(x: torch.Tensor, g: _Group) -> torch.Tensor:
    """The group's input region as (B, C, pixels) (a view when only rows are cut)."""
    b, c, h, w = x.shape
    return x[:, :, g.y0:g.y1, g.x0:g.x1].reshape(b, c, (g.y1 - g.y0) * (g.x1 - g.x0))


class _FusedMetroConConv(torch.autograd.Function):
    """All M·N atrous convs of MetroCon² (weights + optional bias) in one exact pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan: _Plan, idx: list[torch.Tensor]):
        m, n, d, h, w, c = plan.shape
        pt, pb, pl, pr = plan.pad
        bsz = x.shape[0]
        x = x.contiguous()
        buf = x.new_zeros(bsz, m, n, d, h + pt + pb, w + pl + pr)
        for g, ch in zip(plan.groups, idx):
            wg = weight[:, :, g.ky + 1, g.kx + 1].index_select(0, ch)
            part = torch.matmul(wg, _region(x, g)).view(bsz, len(g.rows), len(g.cols), d, g.y1 - g.y0, g.x1 - g.x0)
            for dst, src in _views(plan, g, buf, part):
                dst.add_(src)
        out = buf[..., pt:pt + h, pl:pl + w].reshape(bsz, m * n * d, h, w)
        if bias is not None:
            out.add_(bias.view(1, -1, 1, 1))
        ctx.plan, ctx.idx, ctx.has_bias = plan, idx, bias is not None
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        plan = ctx.plan
        m, n, d, h, w, c = plan.shape
        pt, pb, pl, pr = plan.pad
        bsz = x.shape[0]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(x.device.type, enabled=False):
            grad_out = grad_out.contiguous()
            gbuf = F.pad(grad_out, (pl, pr, pt, pb)).view(bsz, m, n, d, h + pt + pb, w + pl + pr)
            grad_x = torch.zeros_like(x) if need_x else None
            grad_w = torch.zeros_like(weight) if need_w else None
            for g, ch in zip(plan.groups, ctx.idx):
                hr, wr = g.y1 - g.y0, g.x1 - g.x0
                part = grad_out.new_empty(bsz, len(g.rows), len(g.cols), d, hr, wr)
                for src, dst in _views(plan, g, gbuf, part):
                    dst.copy_(src)
                part = part.view(bsz, len(ch), hr * wr)
                if need_w:
                    gw = torch.matmul(part, _region(x, g).transpose(1, 2)).sum(0)
                    grad_w[:, :, g.ky + 1, g.kx + 1].index_copy_(0, ch, gw)
                if need_x:
                    wg = weight[:, :, g.ky + 1, g.kx + 1].index_select(0, ch)
                    grad_x[:, :, g.y0:g.y1, g.x0:g.x1] += torch.matmul(wg.t(), part).view(bsz, c, hr, wr)
            grad_b = grad_out.sum((0, 2, 3)) if (need_b and ctx.has_bias) else None
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
        key = (h, w, x.device)
        if key not in self._plans:
            band_h = self.fused_band if self.fused_band is not None else max(1, h // 8)
            band_w = self.fused_band if self.fused_band is not None else max(1, w // 8)
            plan = _build_plan(self.rows, self.cols, self.depth, h, w, self.in_channels, band_h, band_w)
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
