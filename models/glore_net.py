"""``glore``: the original-GloRe baseline of the msglore paper — dilated ResNet (OS8) with a GloRe unit
in the head.

Head: 3x3 conv-BN-ReLU reducing block 5 to ``model.head_channels`` (512 in the paper's Fig. 2), a
``GloReUnit(head_channels, model.glore.num_mid)`` (64 nodes / 128 states), Dropout2d, 1x1 classifier.
Choice (the GloRe paper gives no segmentation code): the reduction is a 3x3 conv like the FCN head,
so ``glore`` differs from ``fcn`` only by the unit. Keys: ``model.glore.num_mid`` (64),
``model.glore.scale_by_hw`` (true), ``model.glore.init`` (``xavier`` as the official code | ``default``).
"""
from __future__ import annotations

import torch.nn as nn

from models.backbone import ResNetBackbone, build_backbone
from models.config import get_bool, get_choice, get_int, section
from models.fcn import SegModel, common_args, paper_preset, toy_preset
from models.fcn_head import conv_bn_relu
from models.glore import INITS, GloReUnit
from models.registry import register_model


class GloReNet(SegModel):
    def __init__(self, backbone: ResNetBackbone, num_classes: int, head_channels: int = 512, num_mid: int = 64,
                 scale_by_hw: bool = True, dropout: float = 0.1, aux_head: bool = True, aux_channels: int = 256,
                 aux_block: str = "block4", glore_init: str = "xavier"):
        super().__init__(backbone, num_classes, aux_head, aux_channels, dropout, aux_block)
        self.reduce = conv_bn_relu(backbone.channels["block5"], head_channels, 3)
        self.glore = GloReUnit(head_channels, num_mid, scale_by_hw, init=glore_init)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_channels, num_classes, 1))

    def decode(self, feats):
        return self.classifier(self.glore(self.reduce(feats["block5"]))), {}


def glore_args(cfg: dict) -> dict:
    section(cfg, "model.glore")
    return {"num_mid": get_int(cfg, "model.glore.num_mid", 64, lo=1),
            "scale_by_hw": get_bool(cfg, "model.glore.scale_by_hw", True),
            "init": get_choice(cfg, "model.glore.init", INITS, "xavier")}


@register_model("glore",
                toy=toy_preset(glore={"num_mid": 8, "scale_by_hw": True}),
                paper=paper_preset(glore={"num_mid": 64, "scale_by_hw": True}))
def build_glore(cfg: dict) -> GloReNet:
    a, g = common_args(cfg), glore_args(cfg)
    return GloReNet(build_backbone(cfg), a["num_classes"], a["head_channels"], g["num_mid"], g["scale_by_hw"],
                    a["dropout"], a["aux_head"], a["aux_channels"], a["aux_block"], glore_init=g["init"])
