"""FCN baseline (dilated ResNet + FCN head on block 5) and ``SegModel``, the plumbing every model shares.

``SegModel`` owns the backbone, the optional FCN auxiliary head on block 4 (aux output ``block4``,
DESIGN weight 0.4, switched by ``model.aux_head``) and the final bilinear upsampling
(align_corners=False) of every output to the input size. A subclass implements
``decode(feats) -> (logits, extra_aux)``. Module naming convention (``models.summary`` groups
parameters by it): ``backbone`` = backbone, top-level ``aux_*`` = auxiliary heads (unused at
inference), everything else = head.

Common keys (defaults = paper values): ``model.num_classes`` (required), ``model.head_channels`` (512),
``model.dropout`` (0.1), ``model.aux_head`` (true), ``model.aux_channels`` (aux FCN head width;
default head_channels // 2, i.e. 256 like mmsegmentation's aux head).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbone import ResNetBackbone, build_backbone
from models.config import get_bool, get_float, get_int
from models.fcn_head import FCNHead
from models.registry import register_model


def resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def common_args(cfg: dict) -> dict:
    """The model-level keys every model reads, validated."""
    head_channels = get_int(cfg, "model.head_channels", 512, lo=1)
    return {
        "num_classes": get_int(cfg, "model.num_classes", lo=1),
        "head_channels": head_channels,
        "dropout": get_float(cfg, "model.dropout", 0.1, lo=0.0, hi=1.0),
        "aux_head": get_bool(cfg, "model.aux_head", True),
        "aux_channels": get_int(cfg, "model.aux_channels", max(1, head_channels // 2), lo=1),
    }


class SegModel(nn.Module):
    """Backbone + subclass head + optional block-4 FCN aux head; outputs at input size."""

    def __init__(self, backbone: ResNetBackbone, num_classes: int, aux_head: bool = True,
                 aux_channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.aux_block4 = (FCNHead(backbone.channels["block4"], aux_channels, num_classes, dropout)
                           if aux_head else None)

    def decode(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict:
        size = x.shape[-2:]
        feats = self.backbone(x)
        logits, aux = self.decode(feats)
        aux = {name: resize(a, size) for name, a in aux.items()}
        if self.aux_block4 is not None:
            aux["block4"] = resize(self.aux_block4(feats["block4"]), size)
        return {"out": resize(logits, size), "aux": aux}


class FCN(SegModel):
    """Dilated ResNet + FCNHead(block5 -> head_channels -> classes)."""

    def __init__(self, backbone: ResNetBackbone, num_classes: int, head_channels: int = 512,
                 dropout: float = 0.1, aux_head: bool = True, aux_channels: int = 256):
        super().__init__(backbone, num_classes, aux_head, aux_channels, dropout)
        self.head = FCNHead(backbone.channels["block5"], head_channels, num_classes, dropout)

    def decode(self, feats):
        return self.head(feats["block5"]), {}


TOY_BACKBONE = {"depth": 18, "output_stride": 8, "width": 8, "pretrained": None}
PAPER_BACKBONE = {"depth": 50, "output_stride": 8, "width": 64, "pretrained": None}


def toy_preset(**model) -> dict:
    base = {"num_classes": 19, "backbone": dict(TOY_BACKBONE), "head_channels": 32, "aux_channels": 16,
            "dropout": 0.1, "aux_head": True}
    return {"model": {**base, **model}, "loss": {"ignore_index": 255, "aux_weights": {"block4": 0.4}}}


def paper_preset(**model) -> dict:
    base = {"num_classes": 19, "backbone": dict(PAPER_BACKBONE), "head_channels": 512, "aux_channels": 256,
            "dropout": 0.1, "aux_head": True}
    return {"model": {**base, **model}, "loss": {"ignore_index": 255, "aux_weights": {"block4": 0.4}}}


@register_model("fcn", toy=toy_preset(), paper=paper_preset())
def build_fcn(cfg: dict) -> FCN:
    a = common_args(cfg)
    return FCN(build_backbone(cfg), a["num_classes"], a["head_channels"], a["dropout"], a["aux_head"],
               a["aux_channels"])
