"""Global Reasoning unit (GloRe, Chen et al. 2019), structured like the official facebookresearch/GloRe code.

    X ─► conv_state (1x1, C -> S = 2·num_mid)          reduced feature   phi(X)   (S x L)
    X ─► conv_proj  (1x1, C -> N = num_mid nodes)      projection B(X)          (N x L)
    V  = phi(X) · B(X)^T  [· 1/L if scale_by_hw]       node features            (S x N)
    V' = conv2( ReLU( V + conv1_nodewise(V) ) )        graph conv: (I - A) as node-wise Conv1d with an
                                                       identity shortcut, ReLU, state-wise Conv1d (no bias)
    Y  = V' · B(X)                                     back-projection with the *same* B(X)
    out = X + blocker( conv_extend(Y) )                1x1 conv (no bias) + BatchNorm(eps=1e-4) whose
                                                       weight starts at 0, so the unit starts as identity

Parameter names match the official module (``conv_state``, ``conv_proj``, ``gcn.conv1``,
``gcn.conv2``, ``conv_extend``, ``blocker``); ``GloReUnit(512, 64)`` has 185,600 parameters like
the official ``GloRe_Unit(512, 64)``.

For msglore the projection comes from outside: ``forward(x, projection=B)`` with B of shape
(batch, num_nodes, H, W). Build such a unit with ``own_projection=False`` (no ``conv_proj``, so no
parameter is left without a gradient) and ``num_nodes`` = the number of nodes B provides.
``scale_by_hw`` (official ``normalize``) divides the node features by H·W so their magnitude does
not depend on the input size (crops at train time vs. full images at test time).

``init`` (``model.glore.init``): ``"xavier"`` (default) matches the official code, whose
``initializer.xavier`` gives every conv (the 1x1 Conv2d and the graph conv's Conv1d) a
Xavier-uniform weight (gain 1) and a zero bias, and BatchNorm weight 1 / bias 0, before the blocker's
weight is zeroed. ``"default"`` keeps PyTorch's layer defaults (Kaiming-uniform with a = sqrt(5),
uniform biases), whose weights are several times smaller for the node-wise Conv1d. The GloRe paper
says only that A and W are "randomly initialized"; the unit starts as the identity either way.
"""
from __future__ import annotations

import torch
import torch.nn as nn

INITS = ("xavier", "default")


class GraphConv(nn.Module):
    """One graph convolution on node features (batch, states, nodes), as in the official GCN."""

    def __init__(self, num_state: int, num_node: int):
        super().__init__()
        self.conv1 = nn.Conv1d(num_node, num_node, kernel_size=1)   # adjacency A (node-wise)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(num_state, num_state, kernel_size=1, bias=False)  # state update W

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h = self.conv1(v.transpose(1, 2)).transpose(1, 2)
        return self.conv2(self.relu(h + v))


class GloReUnit(nn.Module):
    def __init__(self, in_channels: int, num_mid: int, scale_by_hw: bool = True,
                 num_nodes: int | None = None, own_projection: bool = True, init: str = "xavier"):
        super().__init__()
        self.scale_by_hw = scale_by_hw
        self.num_state = 2 * num_mid
        self.num_nodes = num_mid if num_nodes is None else num_nodes
        self.conv_state = nn.Conv2d(in_channels, self.num_state, 1)
        self.conv_proj = nn.Conv2d(in_channels, self.num_nodes, 1) if own_projection else None
        self.gcn = GraphConv(self.num_state, self.num_nodes)
        self.conv_extend = nn.Conv2d(self.num_state, in_channels, 1, bias=False)
        self.blocker = nn.BatchNorm2d(in_channels, eps=1e-4)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if init == "xavier":         # the official initializer.xavier (module docstring)
            for m in self.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    nn.init.xavier_uniform_(m.weight, gain=1.0)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        nn.init.zeros_(self.blocker.weight)  # residual branch starts silent: the unit is the identity

    def forward(self, x: torch.Tensor, projection: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        if projection is None:
            if self.conv_proj is None:
                raise ValueError("GloReUnit built with own_projection=False needs forward(x, projection=...)")
            projection = self.conv_proj(x)
        if projection.shape[0] != n or projection.shape[1] != self.num_nodes or projection.shape[-2:] != (h, w):
            raise ValueError(f"GloReUnit: projection must be ({n}, {self.num_nodes}, {h}, {w}), "
                             f"got {tuple(projection.shape)}")
        b = projection.reshape(n, self.num_nodes, h * w)
        state = self.conv_state(x).reshape(n, self.num_state, h * w)
        v = torch.bmm(state, b.transpose(1, 2))            # (n, S, N)
        if self.scale_by_hw:
            v = v * (1.0 / (h * w))
        v = self.gcn(v)
        y = torch.bmm(v, b).reshape(n, self.num_state, h, w)
        return x + self.blocker(self.conv_extend(y))

