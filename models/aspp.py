"""DeepLabV3 ASPP: 1x1 + three 3x3 atrous + image-pooling branches, concat, 1x1 projection.

Every branch is conv-BN-ReLU ``channels`` wide (256 in DeepLabV3/V3+); rates 12/24/36 at OS8,
6/12/18 at OS16. The projection is conv-BN-ReLU followed by element-wise dropout as in torchvision (0.1 here; torchvision uses 0.5
in some ports — it is an argument). The pooling branch's BN sees a 1x1 map: with batch size 1 in
train mode BatchNorm cannot compute statistics, so train with batch >= 2 (like the references).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.fcn_head import conv_bn_relu


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
