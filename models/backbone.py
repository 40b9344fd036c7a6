"""Dilated ResNet backbone returning named stages (block2..block5), torchvision-compatible.

Choices:
- Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1..4``, ``downsample.0/1``), so a
  torchvision ImageNet ``state_dict`` loads as is (``fc.*`` ignored).
- Dilation follows torchvision's ``replace_stride_with_dilation`` exactly (no multi-grid): a dilated
  stage keeps stride 1; its first block uses the previous dilation, the others the new one.
  OS8 dilates layer3 by 2 and layer4 by 4; OS16 dilates layer4 by 2.
- ``width`` scales every stage (stem = width, stage i planes = width * 2**i); 64 is the standard
  ResNet. Unlike torchvision, BasicBlock (depth 18/34) accepts dilation, so toy models can be OS8.
- Bottleneck puts the stride on the 3x3 conv (ResNet v1.5, like torchvision).
- ``model.backbone.pretrained``: a local path to a torchvision ImageNet file (``TORCHVISION_FILES``
  names them; both papers fine-tune ImageNet weights), or the string ``none`` = from scratch on
  purpose. ``null`` also trains from scratch, but for depth >= 50 that is almost certainly a
  forgotten path, so ``scratch_warning(cfg)`` returns a one-line warning the callers (search start,
  ``hpo.train``) print. On the meta device (search-space checks) the file is memory-mapped, so its
  keys and shapes are checked without reading the weights.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from models.config import ConfigError, get, get_choice, get_int, section

STAGES = ("block2", "block3", "block4", "block5")
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
OUTPUT_STRIDES = (8, 16)
SCRATCH = "none"   # model.backbone.pretrained: train from scratch on purpose (null warns at depth >= 50)
# torchvision's ImageNet weights (IMAGENET1K_V1) for each depth, from https://download.pytorch.org/models/
TORCHVISION_FILES = {18: "resnet18-f37072fd.pth", 34: "resnet34-b627a593.pth",
                     50: "resnet50-0676ba61.pth", 101: "resnet101-63fe2227.pth"}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet-{18,34,50,101} with output stride 8 or 16.

    ``forward(x)`` -> ``{"block2": layer1 (stride 4), "block3": layer2, "block4": layer3, "block5": layer4}``.
    ``channels`` / ``strides`` give each stage's width and stride so heads can size themselves.
    """

    def __init__(self, depth: int = 50, output_stride: int = 8, width: int = 64, pretrained: str | None = None):
        super().__init__()
        if depth not in DEPTHS:
            raise ConfigError(f"model.backbone.depth: expected one of {', '.join(map(str, DEPTHS))}, got {depth}")
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"model.backbone.output_stride: expected 8 or 16, got {output_stride}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ConfigError(f"model.backbone.width: expected an int >= 1, got {width}")
        kind, layers = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.output_stride, self.width = depth, output_stride, width
        # torchvision's replace_stride_with_dilation for layer2..4
        dilate = (False, True, True) if output_stride == 8 else (False, False, True)

        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2, dilate=dilate[2])

        exp = block.expansion
        self.channels = {s: width * (2 ** i) * exp for i, s in enumerate(STAGES)}
        self.strides = {"block2": 4, "block3": 8, "block4": min(16, output_stride),
                        "block5": output_stride}

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if pretrained:
            self.load_pretrained(pretrained)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        b2 = self.layer1(x)
        b3 = self.layer2(b2)
        b4 = self.layer3(b3)
        b5 = self.layer4(b4)
        return {"block2": b2, "block3": b3, "block4": b4, "block5": b5}

    def load_pretrained(self, path: str) -> None:
        """Load a torchvision-format ImageNet ``state_dict`` from a local file; ``fc.*`` is ignored.

        Any missing/unexpected key or shape mismatch is one ConfigError naming
        ``model.backbone.pretrained`` and listing the first few differences with counts.
        """
        key = "model.backbone.pretrained"
        if not os.path.isfile(path):
            hint = (f" (torchvision's ImageNet weights: https://download.pytorch.org/models/"
                    f"{TORCHVISION_FILES[self.depth]})" if self.width == 64 else "")
            raise ConfigError(f"{key}: no such file {path!r}{hint}; use {SCRATCH!r} to train from scratch on purpose")
        try:
            # on the meta device only keys and shapes matter: memory-map instead of reading ~100-170 MB
            state = _load_weights(path, mmap=self.conv1.weight.is_meta)
        except Exception as e:  # unpickling refused or corrupt file
            raise ConfigError(f"{key}: cannot load {path!r} as a weights-only state_dict ({type(e).__name__}: {e})".replace("\n", " ")) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ConfigError(f"{key}: {path!r} does not hold a state_dict (got {type(state).__name__})")
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
        own = self.state_dict()
        # old torchvision checkpoints predate BatchNorm's num_batches_tracked buffer
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                      if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or mismatched:
            parts = []
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
                if items:
                    more = f", ... (+{len(items) - 5} more)" if len(items) > 5 else ""
                    parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
            raise ConfigError(
                f"{key}: {path!r} does not match ResNet-{self.depth} width {self.width}: " + "; ".join(parts))
        if not self.conv1.weight.is_meta:   # a meta model has no storage to copy into
            self.load_state_dict(state, strict=False)


def _load_weights(path: str, mmap: bool):
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files from before torch.save's zip format cannot be memory-mapped
            pass
    return torch.load(path, map_location="cpu", weights_only=True)


def _pretrained(cfg: dict) -> str | None:
    """``model.backbone.pretrained`` as a path to load, or None (null or ``none``: from scratch)."""
    pretrained = get(cfg, "model.backbone.pretrained", None)
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(f"model.backbone.pretrained: expected a local file path, {SCRATCH!r} or null, "
                          f"got {pretrained!r}")
    if pretrained is None or str(pretrained).strip().lower() == SCRATCH:
        return None
    return os.fspath(pretrained)


def scratch_warning(cfg: dict) -> str | None:
    """One line when a depth >= 50 backbone would silently train from scratch (``pretrained: null``).

    Both papers fine-tune ImageNet weights; ``pretrained: none`` says "from scratch" on purpose and is
    silent, as are small (toy) depths. Reads the config leniently: validation is ``build_backbone``'s job.
    """
    backbone = (cfg.get("model") or {}).get("backbone") or {}
    if not isinstance(backbone, dict) or backbone.get("pretrained") is not None:
        return None
    depth = backbone.get("depth", 50)
    if not isinstance(depth, int) or depth < 50:
        return None
    name = TORCHVISION_FILES.get(depth, "resnet*.pth")
    return (f"warning: model.backbone.pretrained is null: the ResNet-{depth} backbone trains from scratch, "
            f"unlike both papers (ImageNet weights, e.g. https://download.pytorch.org/models/{name}); "
            f"set a local path, or {SCRATCH!r} to train from scratch on purpose")


def build_backbone(cfg: dict) -> ResNetBackbone:
    """ResNetBackbone from ``model.backbone.{depth, output_stride, width, pretrained}`` (paper defaults)."""
    section(cfg, "model.backbone")
    depth = get_choice(cfg, "model.backbone.depth", tuple(DEPTHS), 50)
    os_ = get_choice(cfg, "model.backbone.output_stride", OUTPUT_STRIDES, 8)
    width = get_int(cfg, "model.backbone.width", 64, lo=1)
    return ResNetBackbone(depth, os_, width, _pretrained(cfg))
