"""FCN head (mmsegmentation's FCNHead with one conv): 3x3 conv-BN-ReLU, Dropout2d, 1x1 classifier.

Used as the main head of ``fcn`` and as the auxiliary head on block 4 of every model.
Returns logits at the input feature's resolution; the model upsamples them.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, BN follows) + BatchNorm + ReLU, 'same' padding."""
    pad = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True))


class FCNHead(nn.Module):
    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
