"""FCN baseline (dilated ResNet + FCN head on block 5) and ``SegModel``, the plumbing every model shares.

``SegModel`` owns the backbone, the optional FCN auxiliary head (on block 4 by default: aux output
``block4``, weight 0.4 as in PSPNet / mmsegmentation; switched by ``model.aux_head``, placed by
``model.aux_block``) and the final bilinear upsampling (align_corners=False) of every output to the
input size. A subclass implements
``decode(feats) -> (logits, extra_aux)``. Module naming convention (``models.summary`` groups
parameters by it): ``backbone`` = backbone, top-level ``aux_*`` = auxiliary heads (unused at
inference), everything else = head.

Common keys (defaults = paper values): ``model.num_classes`` (required), ``model.head_channels`` (512),
``model.dropout`` (0.1), ``model.aux_head`` (true), ``model.aux_channels`` (aux FCN head width;
default head_channels // 2, i.e. 256 like mmsegmentation's aux head), ``model.aux_block`` (``block4``
| ``block5``: the stage the aux head reads; its aux output and loss weight carry that name). The aux
head module is named after its block (``aux_block4``), so checkpoints of the default stay loadable.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbone import ResNetBackbone, build_backbone
from models.config import get_bool, get_choice, get_float, get_int
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
        "aux_block": get_choice(cfg, "model.aux_block", AUX_BLOCKS, "block4"),
    }


AUX_BLOCKS = ("block4", "block5")


class SegModel(nn.Module):
    """Backbone + subclass head + optional FCN aux head (block 4 or 5); outputs at input size."""

    def __init__(self, backbone: ResNetBackbone, num_classes: int, aux_head: bool = True,
                 aux_channels: int = 256, dropout: float = 0.1, aux_block: str = "block4"):
        super().__init__()
        if aux_block not in AUX_BLOCKS:
            raise ValueError(f"aux_block must be one of {', '.join(AUX_BLOCKS)}, got {aux_block!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.aux_block = aux_block
        # What inputs need (detectron2's name): H and W multiples of this. At multiples of the output
        # stride every feature cell covers whole pixels; SpaceMeshLab's pixel shuffle needs it exactly.
        # hpo.tuning.space checks every crop of a search against it.
        self.size_divisibility = backbone.output_stride
        head = FCNHead(backbone.channels[aux_block], aux_channels, num_classes, dropout) if aux_head else None
        for block in AUX_BLOCKS:   # aux_block4 / aux_block5: the module is named after what it reads
            setattr(self, f"aux_{block}", head if block == aux_block else None)

    def aux_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{aux_block: logits}`` at feature resolution, or ``{}`` without an aux head."""
        head = getattr(self, f"aux_{self.aux_block}")
        return {} if head is None else {self.aux_block: head(feats[self.aux_block])}

    def decode(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict:
        size = x.shape[-2:]
        feats = self.backbone(x)
        logits, aux = self.decode(feats)
        aux = {name: resize(a, size) for name, a in {**aux, **self.aux_logits(feats)}.items()}
        return {"out": resize(logits, size), "aux": aux}


class FCN(SegModel):
    """Dilated ResNet + FCNHead(block5 -> head_channels -> classes)."""

    def __init__(self, backbone: ResNetBackbone, num_classes: int, head_channels: int = 512,
                 dropout: float = 0.1, aux_head: bool = True, aux_channels: int = 256, aux_block: str = "block4"):
        super().__init__(backbone, num_classes, aux_head, aux_channels, dropout, aux_block)
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
               a["aux_channels"], a["aux_block"])
