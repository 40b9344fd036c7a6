"""``msglore`` (paper 000): a GloRe unit whose projection matrix is built from channels *selected* out of
backbone blocks 3/4/5 ("selection module" + "relation module"), with an auxiliary loss on the selected
features (weight alpha = 0.7, aux output ``selection``).

Pipeline (dilated ResNet, OS8):
  selection, per block b in (3, 4, 5): f_b = maxpool(conv3x3-BN-ReLU(block_b))        (k_b channels)
      score_b = softmax_over_channels(GAP(f_b))                                         (batch, k_b)
      keep the top-N_b channels of f_b in descending score order, per image
  projection B = concat(selected_3, selected_4, selected_5)    (batch, N3+N4+N5 nodes, H, W)
  relation: x = conv3x3-BN-ReLU(block5 -> head_channels); y = GloReUnit(x, projection=B)
  out = 1x1 conv(Dropout2d(y));  aux "selection" = 1x1 conv(Dropout2d(B))  (both upsampled to input size)

Choices where the paper is unclear (the ones that plausibly matter are switches under ``model.selection``):
- ``score_weighting`` (true): top-N by softmax(GAP) alone is order-equivalent to top-N by GAP and gives
  the softmax no gradient. The paper says "the value of softmax is learned to be large" for useful
  channels, so the selected maps are multiplied by their softmax score. Scores are rescaled by the
  channel count k (a uniform softmax gives weight 1) so the projection keeps the magnitude of the maps —
  raw softmax values (~1/k) would shrink it by 2-3 orders of magnitude. false = plain hard selection.
- ``pool`` (true): the figure shows conv-BN-ReLU then max pooling, yet the selected maps feed the GloRe
  projection at block-5 resolution and the aux branch upsamples them x8, so the pool must keep the
  resolution: 3x3 max pool, stride 1, padding 1. false = no pooling.
- Resolution alignment: at OS8 blocks 3/4/5 share one resolution; at OS16 block 3 is twice as large
  and its selected maps are resized (bilinear) to block 5's size.
- ``channels`` (null): the selection conv keeps each block's width (the figure's GAP vectors are
  512/1024/2048 long), which costs ~50M parameters at ResNet-50 width. An int compresses all three
  blocks to that width instead; N_b is then bounded by it.
- ``order`` ("rank"): node i of block b is its i-th highest-scoring channel, so the graph conv's
  node-wise weights see a consistent meaning per node even though each image selects its own
  channels. "channel" orders the selected channels by channel index instead.
- The relation module's GloRe unit has no ``conv_proj`` of its own (the selection provides B) and
  N3+N4+N5 nodes (64 in the paper = GloRe's 64 nodes), ``2 * model.glore.num_mid`` states (128).
- The aux loss uses all selected maps together ("combined to predict"): Dropout2d, 1x1 conv, upsample.
- **No block-4 aux head in the paper preset** (``model.aux_head: false``): eq. (4) is
  L_opt = L + alpha * L_aux with L_aux the selection loss and nothing else, and alpha is the knob the
  paper (and the search) studies; the usual FCN aux loss on block 4 (0.4) would add a second auxiliary
  gradient into the same blocks and muddle that study. ``model.aux_head: true`` (+
  ``loss.aux_weights.block4``) brings it back. The toy preset and the toy demo configs keep it: their
  recorded results (README) were measured with it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.backbone import ResNetBackbone, build_backbone
from models.config import get, get_bool, get_choice, get_int, section
from models.fcn import SegModel, common_args, paper_preset, resize, toy_preset
from models.fcn_head import conv_bn_relu
from models.glore import GloReUnit
from models.glore_net import glore_args
from models.registry import register_model

SELECTED_BLOCKS = ("block3", "block4", "block5")


class SelectionBranch(nn.Module):
    """conv3x3-BN-ReLU (+ 3x3/s1 max pool), then per-image top-N channels by softmax(GAP)."""

    def __init__(self, in_channels: int, channels: int, num_select: int, pool: bool = True,
                 score_weighting: bool = True, order: str = "rank"):
        super().__init__()
        if not 1 <= num_select <= channels:
            raise ValueError(f"num_select must be in [1, {channels}], got {num_select}")
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1) if pool else nn.Identity()
        self.num_select, self.score_weighting, self.order = num_select, score_weighting, order

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (selected maps (n, N, h, w), selected channel indices (n, N))."""
        f = self.pool(self.conv(x))
        n, k, h, w = f.shape
        scores = torch.softmax(f.mean(dim=(2, 3)), dim=1)              # (n, k)
        top, idx = scores.topk(self.num_select, dim=1)                 # descending
        if self.order == "channel":
            idx, perm = idx.sort(dim=1)
            top = top.gather(1, perm)
        selected = f.gather(1, idx[:, :, None, None].expand(n, self.num_select, h, w))
        if self.score_weighting:
            selected = selected * (top * k)[:, :, None, None]           # softmax gets a gradient; mean weight 1
        return selected, idx


class MSGloReNet(SegModel):
    def __init__(self, backbone: ResNetBackbone, num_classes: int, num_select=(11, 21, 32),
                 head_channels: int = 512, num_mid: int = 64, scale_by_hw: bool = True,
                 selection_channels: int | None = None, pool: bool = True, score_weighting: bool = True,
                 order: str = "rank", dropout: float = 0.1, aux_head: bool = True, aux_channels: int = 256,
                 aux_block: str = "block4", glore_init: str = "xavier"):
        super().__init__(backbone, num_classes, aux_head, aux_channels, dropout, aux_block)
        self.selection = nn.ModuleDict({
            b: SelectionBranch(backbone.channels[b], selection_channels or backbone.channels[b], n,
                               pool, score_weighting, order)
            for b, n in zip(SELECTED_BLOCKS, num_select)})
        num_nodes = sum(num_select)
        self.reduce = conv_bn_relu(backbone.channels["block5"], head_channels, 3)
        self.relation = GloReUnit(head_channels, num_mid, scale_by_hw, num_nodes=num_nodes, own_projection=False,
                                  init=glore_init)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_channels, num_classes, 1))
        self.aux_selection = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(num_nodes, num_classes, 1))
        self.last_selected: dict[str, torch.Tensor] = {}  # channel indices of the last forward (inspection)

    def decode(self, feats):
        x = self.reduce(feats["block5"])
        maps = []
        for b, branch in self.selection.items():
            sel, idx = branch(feats[b])
            self.last_selected[b] = idx.detach()
            maps.append(resize(sel, x.shape[-2:]))
        projection = torch.cat(maps, dim=1)
        out = self.classifier(self.relation(x, projection=projection))
        return out, {"selection": self.aux_selection(projection)}


def selection_args(cfg: dict, backbone: ResNetBackbone) -> dict:
    section(cfg, "model.selection")
    channels = get(cfg, "model.selection.channels", None)
    if channels is not None:
        channels = get_int(cfg, "model.selection.channels", lo=1)
    counts = []
    for b, key, default in zip(SELECTED_BLOCKS, ("n3", "n4", "n5"), (11, 21, 32)):
        k = channels or backbone.channels[b]
        why = (f"{b} has {k} channels" if channels is None else f"model.selection.channels is {k}")
        counts.append(get_int(cfg, f"model.selection.{key}", default, lo=1, hi=k, why=why))
    return {"num_select": tuple(counts), "channels": channels,
            "pool": get_bool(cfg, "model.selection.pool", True),
            "score_weighting": get_bool(cfg, "model.selection.score_weighting", True),
            "order": get_choice(cfg, "model.selection.order", ("rank", "channel"), "rank")}


def _preset(kind: str, n: tuple[int, int, int], num_mid: int) -> dict:
    make = toy_preset if kind == "toy" else paper_preset
    p = make(glore={"num_mid": num_mid, "scale_by_hw": True},
             selection={"n3": n[0], "n4": n[1], "n5": n[2], "channels": None, "pool": True,
                        "score_weighting": True, "order": "rank"})
    p["loss"]["aux_weights"]["selection"] = 0.7
    if kind == "paper":          # eq. (4): L + alpha * L_aux, no block-4 aux loss (module docstring)
        p["model"]["aux_head"] = False
        del p["loss"]["aux_weights"]["block4"]
    return p


@register_model("msglore", toy=_preset("toy", (4, 6, 8), 8), paper=_preset("paper", (11, 21, 32), 64))
def build_msglore(cfg: dict) -> MSGloReNet:
    a, g = common_args(cfg), glore_args(cfg)
    backbone = build_backbone(cfg)
    s = selection_args(cfg, backbone)
    return MSGloReNet(backbone, a["num_classes"], s["num_select"], a["head_channels"], g["num_mid"],
                      g["scale_by_hw"], s["channels"], s["pool"], s["score_weighting"], s["order"],
                      a["dropout"], a["aux_head"], a["aux_channels"], a["aux_block"], glore_init=g["init"])
