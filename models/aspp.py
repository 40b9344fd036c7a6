"""DeepLabV3 ASPP: 1x1 + three 3x3 atrous + image-pooling branches, concat, 1x1 projection.

Every branch is conv-BN-ReLU ``channels`` wide (256 in DeepLabV3/V3+). The atrous rates follow the
output stride (``default_rates``): 6/12/18 at OS16 as in DeepLabV3/V3+, doubled to 12/24/36 at OS8
so every branch still covers the same image area. The projection is conv-BN-ReLU followed by
element-wise dropout, 0.1 here as in the official TensorFlow DeepLab (``keep_prob=0.9`` after the
concat projection); torchvision's ASPP uses 0.5 — it is an argument. The pooling branch's BN sees
a 1x1 map: with batch size 1 in train mode BatchNorm cannot compute statistics, so train with
batch >= 2 (like the references).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.fcn_head import conv_bn_relu

BASE_RATES = (6, 12, 18)   # DeepLabV3/V3+ at output stride 16


def default_rates(output_stride: int) -> list[int]:
    """ASPP rates for a backbone output stride: 6/12/18 at OS16, 12/24/36 at OS8 (rate x 16/OS)."""
    return [r * 16 // output_stride for r in BASE_RATES]


class ASPPPooling(nn.Module):
    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = conv_bn_relu(in_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36),
                 dropout: float = 0.1):
        super().__init__()
        branches = [conv_bn_relu(in_channels, channels, 1)]
        branches += [conv_bn_relu(in_channels, channels, 3, dilation=int(r)) for r in rates]
        branches.append(ASPPPooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(conv_bn_relu(channels * len(branches), channels, 1), nn.Dropout(dropout))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))
