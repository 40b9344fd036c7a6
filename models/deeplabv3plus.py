"""``deeplabv3plus``: ResNet + ASPP on block 5 + DeepLabV3+ decoder (the baseline of both papers' tables).

Decoder: 1x1 conv-BN-ReLU projecting block 2 to 48 channels, ASPP output upsampled (bilinear) to
block 2's stride-4 resolution, concat, two 3x3 conv-BN-ReLU (``model.aspp.channels`` wide, 256),
Dropout2d, 1x1 classifier. Keys: ``model.aspp.rates`` (null = follow the output stride: 12/24/36
at OS8, 6/12/18 at OS16; the paper presets leave it null so switching the stride keeps the branches'
reach), ``model.aspp.channels`` (256), ``model.dropout`` (also the ASPP projection's dropout).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.aspp import ASPP, default_rates
from models.backbone import OUTPUT_STRIDES, ResNetBackbone, build_backbone
from models.config import get_choice, get_int, get_int_list, section
from models.fcn import SegModel, common_args, paper_preset, resize, toy_preset
from models.fcn_head import conv_bn_relu
from models.registry import register_model

class DeepLabV3Plus(SegModel):
    def __init__(self, backbone: ResNetBackbone, num_classes: int, aspp_channels: int = 256,
                 rates=(12, 24, 36), low_level_channels: int = 48, dropout: float = 0.1,
                 aux_head: bool = True, aux_channels: int = 256, aux_block: str = "block4"):
        super().__init__(backbone, num_classes, aux_head, aux_channels, dropout, aux_block)
        self.aspp = ASPP(backbone.channels["block5"], aspp_channels, rates, dropout)
        self.low_level = conv_bn_relu(backbone.channels["block2"], low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, aspp_channels, 3),
            conv_bn_relu(aspp_channels, aspp_channels, 3))
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(aspp_channels, num_classes, 1))

    def decode(self, feats):
        low = self.low_level(feats["block2"])
        high = resize(self.aspp(feats["block5"]), low.shape[-2:])
        return self.classifier(self.decoder(torch.cat([high, low], dim=1))), {}


def aspp_args(cfg: dict) -> dict:
    """``model.aspp.{rates, channels}``; absent or null rates follow the output stride."""
    if section(cfg, "model.aspp").get("rates") is None:
        rates = default_rates(get_choice(cfg, "model.backbone.output_stride", OUTPUT_STRIDES, 8))
    else:
        rates = get_int_list(cfg, "model.aspp.rates", lo=1)
    return {"rates": rates, "channels": get_int(cfg, "model.aspp.channels", 256, lo=1)}


@register_model("deeplabv3plus",
                toy=toy_preset(aspp={"rates": [2, 4, 6], "channels": 32}),
                paper=paper_preset(aspp={"rates": None, "channels": 256}))   # rates from the stride
def build_deeplabv3plus(cfg: dict) -> DeepLabV3Plus:
    a = common_args(cfg)
    backbone = build_backbone(cfg)
    p = aspp_args(cfg)
    return DeepLabV3Plus(backbone, a["num_classes"], p["channels"], p["rates"], 48, a["dropout"],
                         a["aux_head"], a["aux_channels"], a["aux_block"])
