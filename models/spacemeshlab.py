"""``spacemeshlab`` (paper 003): dilated ResNet + SpaM side branch + MetroCon² (or ASPP) + SpaceMeshLab decoder.

Data flow (paper preset: OS16, default stages; ``b`` = backbone feature, ``m`` = SpaM feature at input
resolution)::

    image ─► stem (block1, s4) ─► layer1 (block2, s4) ─► layer2 (block3, s8) ─► layer3 (block4, s16) ─► layer4 (block5, s16)
      │          ▲▼ exchange          ▲▼ exchange            (no exchange)             ▲▼ exchange        ▲▼ exchange
      └─► SpaM1 ─────────► SpaM2 ─────────────────────────────────────────► SpaM4 ──────────► SpaM5 ─► m
    block5 ─► MetroCon² (or ASPP) ─► ctx
    decoder: [ShuffleUp(ctx) ; UnshuffleDown(m)] at stride 4 ─► 2 x (3x3 conv-BN-ReLU) ─► Dropout ─► 1x1 ─► bilinear
    aux: FCN head on block 4 (after its exchange), weight 0.4 (``model.aux_block: block5`` moves it).

Choices where the paper is unclear (SpaM/SCA/CCA internals are in ``models/spam.py``):

- **Where the exchange happens**: after the stem (the paper's "block 1", taken after the max-pool,
  stride 4) and after layer1/3/4 (blocks 2/4/5); block 3 (layer2) is skipped as the paper says.
  Each exchanged stage gets one SpaM block first. ``model.spam_options.stages`` changes the set.
- **Scale factor 4, two steps**: a stage at stride s is reached with ``shuffle_steps(s, 4)``:
  s4 -> one x4 step, s8 -> x4 then x2, s16 -> x4 twice. (At OS16 every step is exactly x4 and
  block 3, at s8, is the only stage that would break that, which fits the paper's remark.)
- **Output stride 16** (paper preset): the paper never states it, but what it does state fits OS16
  only — "two consecutive" x4 shuffle steps (at OS8 blocks 4/5 sit at s8: x4 then x2); block 3
  omitted "for consistent pixel shuffle" (only at OS16 is block 3, at s8, the one stage whole x4
  steps cannot reach; at OS8 blocks 3/4/5 share s8); ASPP rates "6, 12, 18 from [3]" (DeepLabV3+'s
  OS16 rates); Pascal-Context sizes rounded to multiples of 16; the training strategy of [11]
  (DeepLabV3 trains at OS16). MetroCon²'s grid {1..18}² is in feature pixels, so at OS8 it would
  reach half as far in the image. OS8 is one key away: ``model.backbone.output_stride: 8`` (ASPP
  rates follow the stride; the MetroCon² grid does not).
- **Decoder**: the paper aligns the SpaM and MetroCon² outputs "with the same shuffle/attention
  modules"; here both meet at stride 4 (``spam_options.decoder_stride``), the DeepLabV3+ decoder's
  resolution: context ShuffleUp (+SCA) to ``head_channels``, SpaM UnshuffleDown (+CCA) to 48
  channels (the width DeepLabV3+ gives its block-2 projection, which SpaM replaces). Then concat,
  two 3x3 conv-BN-ReLU (``head_channels``), Dropout2d, 1x1 classifier, bilinear to input size.
- **MetroCon² output**: the paper forwards the concatenation to the decoder; here MetroCon2's
  ``project=`` 1x1 conv-BN-ReLU (+ dropout) takes it to ``head_channels`` first, mirroring the
  projection inside ASPP (whose 5 x 256 = 1280-wide concatenation is what the paper's depth rule
  matches), so Table 2's ASPP-vs-MetroCon² rows differ only in the parallel branches.
- **Aux head on block 4** (``model.aux_block``): the paper adds an "auxiliary FCN branch on the last
  block of the backbone" with weight 0.4. Read literally that is block 5, the feature MetroCon²
  already reads; the convention the paper's FCN aux head and its 0.4 weight come from (PSPNet,
  mmsegmentation, torchvision's DeepLabV3) puts it on block 4 (layer3), and "last block" may count
  the blocks before the context head. Block 4 is the default; ``model.aux_block: block5`` is the
  literal reading (its aux output and loss weight are then named ``block5``).
- ``spam: false`` is DeepLabV3+ (with ``context: aspp``) or DeepLabV3+ with MetroCon²: the decoder
  uses the usual 48-channel block-2 projection and bilinear upsampling; ``sca_cca`` is then unused.
- ``model.metrocon.grid`` wins over ``rows``/``cols`` (a search space samples it on top of a base
  config): a name from ``models.metrocon.GRIDS`` (rows = cols = that grid), ``[rows, cols]`` (one
  categorical choice holding a rectangular grid), or one list used for both axes.
- Inputs: with SpaM, H and W must be multiples of the backbone output stride (pixel shuffle needs
  exact feature sizes); ``spam_options.pad_input: true`` zero-pads to the next multiple and crops
  the logits instead. The model's ``size_divisibility`` attribute (every model has one) tells callers
  the multiple, the backbone's ``output_stride``; without SpaM it is advisory, as for the other models.
- Presets: ``paper`` = ResNet-101, OS16 (see above), width 64, grid {1..18}², SpaM width 32, 4 heads,
  decoder 256 wide. SpaM width and head count are not in the paper. ``toy`` = ResNet-18 width 8,
  grid {1,2,3}² of depth 4, SpaM width 8, 2 heads, decoder 32 wide.

Config keys: ``model.{spam, sca_cca, context, head_channels, dropout, aux_head, aux_channels, aux_block}``,
``model.metrocon.{rows, cols, grid, depth, impl}`` (+ MetroCon2's ``norm, act, confidence,
confidence_init, fused_band`` when set), ``model.aspp.{rates, channels}``,
``model.spam_options.{channels, heads, scale_factor, stages, decoder_stride, convs_per_block,
sca_kernel, cca_reduction, zero_init, pad_input}``. docs/spacemeshlab.md maps the paper's tables to configs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.aspp import ASPP
from models.backbone import ResNetBackbone, build_backbone
from models.config import ConfigError, get, get_bool, get_choice, get_int, get_int_list, section
from models.deeplabv3plus import aspp_args
from models.fcn import SegModel, common_args, paper_preset, resize, toy_preset
from models.fcn_head import conv_bn_relu
from models.metrocon import GRIDS, IMPLS, MetroCon2, MetroConArgumentError
from models.registry import register_model
from models.spam import SpaMBlock, SpaMExchange, ShuffleUp, UnshuffleDown, shuffle_steps

STAGE_ORDER = ("block1", "block2", "block3", "block4", "block5")
DEFAULT_STAGES = ("block1", "block2", "block4", "block5")   # paper: block 3 omitted
LOW_LEVEL_CHANNELS = 48                                      # DeepLabV3+ block-2 projection width
CONTEXTS = ("aspp", "metrocon")
TOY_GRID = [1, 2, 3]
PAPER_GRID = "dense18x18"                                    # {1..18}^2, depth 4: the paper's default


class MetroConContext(nn.Module):
    """MetroCon² with ASPP's 1x1 conv-BN-ReLU projection (``project=``) and its dropout after it."""

    def __init__(self, metrocon: MetroCon2, dropout: float = 0.1):
        super().__init__()
        self.metrocon = metrocon
        self.dropout = nn.Dropout(dropout)
        self.out_channels = metrocon.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.metrocon(x))


class SpaceMeshLab(SegModel):
    """See the module docstring. ``forward(x) -> {"out": logits, "aux": {aux_block: logits}}`` at input size."""

    def __init__(self, backbone: ResNetBackbone, num_classes: int, context: nn.Module, *,
                 head_channels: int = 256, spam: bool = True, attention: bool = True,
                 spam_channels: int = 32, heads: int = 4, scale_factor: int = 4,
                 stages: Sequence[str] = DEFAULT_STAGES, decoder_stride: int = 4, convs_per_block: int = 1,
                 sca_kernel: int = 7, cca_reduction: int = 16, zero_init: bool = True, pad_input: bool = False,
                 dropout: float = 0.1, aux_head: bool = True, aux_channels: int = 256, aux_block: str = "block4"):
        super().__init__(backbone, num_classes, aux_head, aux_channels, dropout, aux_block)
        self.spam, self.pad_input = spam, pad_input
        self.output_stride = backbone.output_stride
        self.context = context
        strides = {"block1": 4, **backbone.strides}
        channels = {"block1": backbone.width, **backbone.channels}
        shared = dict(factor=scale_factor, heads=heads, attention=attention)

        if spam:
            self.stages = [s for s in STAGE_ORDER if s in stages]
            self.spam_blocks = nn.ModuleDict()
            self.exchanges = nn.ModuleDict()
            in_ch = 3  # the branch starts from the image itself (see module docstring)
            for s in self.stages:
                self.spam_blocks[s] = SpaMBlock(in_ch, spam_channels, convs_per_block)
                self.exchanges[s] = SpaMExchange(channels[s], spam_channels, strides[s], kernel_size=sca_kernel,
                                                 reduction=cca_reduction, zero_init=zero_init, **shared)
                in_ch = spam_channels
            up_steps = shuffle_steps(backbone.output_stride // decoder_stride, scale_factor)
            self.context_up = ShuffleUp(context.out_channels, head_channels, up_steps, heads=heads,
                                        attention=attention, kernel_size=sca_kernel)
            self.spam_down = UnshuffleDown(spam_channels, LOW_LEVEL_CHANNELS, shuffle_steps(decoder_stride, scale_factor),
                                           heads=heads, attention=attention, reduction=cca_reduction)
        else:
            self.stages = []
            self.low_level = conv_bn_relu(backbone.channels["block2"], LOW_LEVEL_CHANNELS, 1)
        high_channels = head_channels if spam else context.out_channels
        self.decoder = nn.Sequential(
            conv_bn_relu(high_channels + LOW_LEVEL_CHANNELS, head_channels, 3),
            conv_bn_relu(head_channels, head_channels, 3))
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_channels, num_classes, 1))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        # pixel shuffle needs exact feature sizes: every stage is ceil(H / stride), so H % OS == 0
        h, w = x.shape[-2:]
        k = self.size_divisibility
        if not self.spam or (h % k == 0 and w % k == 0):
            return x
        if not self.pad_input:
            raise ConfigError(
                f"model.spam_options.pad_input: input {h}x{w} is not a multiple of {k} (SpaM pixel-shuffles "
                f"features of output stride {k}); use H and W divisible by {k} or set pad_input: true")
        return F.pad(x, (0, (-w) % k, 0, (-h) % k))

    def forward(self, x: torch.Tensor) -> dict:
        h, w = x.shape[-2:]
        x = self._pad(x)
        size = x.shape[-2:]
        bb = self.backbone
        stage_fns = {"block1": lambda t: bb.maxpool(bb.relu(bb.bn1(bb.conv1(t)))), "block2": bb.layer1,
                     "block3": bb.layer2, "block4": bb.layer3, "block5": bb.layer4}
        feats, b, m = {}, x, x
        for name in STAGE_ORDER:
            b = stage_fns[name](b)
            if name in self.stages:
                m = self.spam_blocks[name](m)
                b, m = self.exchanges[name](b, m)
            feats[name] = b
        ctx = self.context(feats["block5"])
        if self.spam:
            high, low = self.context_up(ctx), self.spam_down(m)
        else:
            low = self.low_level(feats["block2"])
            high = resize(ctx, low.shape[-2:])
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        aux = {name: resize(a, size)[..., :h, :w] for name, a in self.aux_logits(feats).items()}
        return {"out": resize(logits, size)[..., :h, :w], "aux": aux}


# ---------------------------------------------------------------- config -> model

def _read(reader, cfg: dict, key: str, default, *args, **kwargs):
    """``reader(cfg, key, ...)``, but an absent *or null* key gives ``default`` (null = "use the default")."""
    return default if get(cfg, key, None) is None else reader(cfg, key, *args, **kwargs)


METROCON_OPTIONS = ("norm", "act", "confidence", "confidence_init", "fused_band")  # passed through when set


def _is_dilations(v) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v))


def _grid(grid) -> tuple[list[int], list[int]]:
    """``model.metrocon.grid``: a name, ``[rows, cols]`` (a categorical search choice), or one list for both."""
    if isinstance(grid, str) and grid in GRIDS:
        return list(GRIDS[grid]), list(GRIDS[grid])
    if isinstance(grid, (list, tuple)) and len(grid) == 2 and all(_is_dilations(g) for g in grid):
        return list(grid[0]), list(grid[1])
    if _is_dilations(grid):
        return list(grid), list(grid)
    raise ConfigError(f"model.metrocon.grid: expected one of {', '.join(GRIDS)}, [rows, cols] or one list of "
                      f"dilations (ints >= 1), got {grid!r}")


def metrocon_args(cfg: dict) -> dict:
    """``model.metrocon.{grid | rows, cols}, depth, impl`` (+ MetroCon2's optional switches), keys named in errors."""
    section(cfg, "model.metrocon")
    grid = get(cfg, "model.metrocon.grid", None)
    if grid is not None:
        rows, cols = _grid(grid)
    else:
        rows = _read(get_int_list, cfg, "model.metrocon.rows", list(GRIDS[PAPER_GRID]), lo=1)
        cols = _read(get_int_list, cfg, "model.metrocon.cols", list(GRIDS[PAPER_GRID]), lo=1)
    depth = get(cfg, "model.metrocon.depth", None)
    if depth is not None:
        depth = get_int(cfg, "model.metrocon.depth", lo=1)
    args = {"rows": rows, "cols": cols, "depth": depth,
            "impl": _read(get_choice, cfg, "model.metrocon.impl", "fused", IMPLS)}
    for k in METROCON_OPTIONS:
        if get(cfg, f"model.metrocon.{k}", None) is not None:
            args[k] = get(cfg, f"model.metrocon.{k}")
    return args


def build_metrocon(in_channels: int, args: dict, project: int) -> MetroCon2:
    """MetroCon2 with its argument errors renamed to config keys (``rows`` -> ``model.metrocon.rows``)."""
    try:
        return MetroCon2(in_channels, project=project, **args)
    except MetroConArgumentError as err:
        msg = str(err).split(": ", 1)[-1].replace("\n", " ")
        raise ConfigError(f"model.metrocon.{err.argument}: {msg}") from None


def spam_args(cfg: dict, output_stride: int, head_channels: int) -> dict:
    p = "model.spam_options"
    section(cfg, p)
    heads = _read(get_int, cfg, f"{p}.heads", 4, lo=1)
    channels = _read(get_int, cfg, f"{p}.channels", 32, lo=1)
    if channels % heads:
        raise ConfigError(f"{p}.heads: must divide {p}.channels ({channels}), got {heads}")
    factor = _read(get_int, cfg, f"{p}.scale_factor", 4, lo=2)
    stages = _read(get, cfg, f"{p}.stages", list(DEFAULT_STAGES))
    if (not isinstance(stages, (list, tuple)) or not stages or len(set(stages)) != len(stages)
            or any(s not in STAGE_ORDER for s in stages)):
        raise ConfigError(f"{p}.stages: expected a non-empty list of distinct names from "
                          f"{', '.join(STAGE_ORDER)}, got {stages!r}")
    divisors = [d for d in range(1, output_stride + 1) if output_stride % d == 0]
    dstride = _read(get_int, cfg, f"{p}.decoder_stride", 4)
    if dstride not in divisors:
        raise ConfigError(f"{p}.decoder_stride: expected a divisor of the output stride {output_stride} "
                          f"({', '.join(map(str, divisors))}), got {dstride}")
    if dstride != output_stride and head_channels % heads:
        raise ConfigError(f"{p}.heads: must divide model.head_channels ({head_channels}) for the decoder's SCA, "
                          f"got {heads}")
    kernel = _read(get_int, cfg, f"{p}.sca_kernel", 7, lo=1)
    if kernel % 2 == 0:
        raise ConfigError(f"{p}.sca_kernel: expected an odd int, got {kernel}")
    return {"spam_channels": channels, "heads": heads, "scale_factor": factor, "stages": list(stages),
            "decoder_stride": dstride, "convs_per_block": _read(get_int, cfg, f"{p}.convs_per_block", 1, lo=1),
            "sca_kernel": kernel, "cca_reduction": _read(get_int, cfg, f"{p}.cca_reduction", 16, lo=1),
            "zero_init": _read(get_bool, cfg, f"{p}.zero_init", True), "pad_input": _read(get_bool, cfg, f"{p}.pad_input", False)}


@register_model(
    "spacemeshlab",
    toy=toy_preset(spam=True, sca_cca=True, context="metrocon",
                   metrocon={"rows": TOY_GRID, "cols": TOY_GRID, "depth": 4, "impl": "fused"},
                   aspp={"rates": [2, 4, 6], "channels": 32},
                   spam_options={"channels": 8, "heads": 2}),
    paper=paper_preset(backbone={"depth": 101, "output_stride": 16, "width": 64, "pretrained": None},
                       head_channels=256, spam=True, sca_cca=True, context="metrocon",
                       metrocon={"rows": list(GRIDS[PAPER_GRID]), "cols": list(GRIDS[PAPER_GRID]), "depth": None,
                                 "impl": "fused"},
                       aspp={"rates": None, "channels": 256},          # rates follow the output stride
                       spam_options={"channels": 32, "heads": 4}))
def build_spacemeshlab(cfg: dict) -> SpaceMeshLab:
    a = common_args(cfg)
    spam = _read(get_bool, cfg, "model.spam", True)
    attention = _read(get_bool, cfg, "model.sca_cca", True)
    context_kind = _read(get_choice, cfg, "model.context", "metrocon", CONTEXTS)
    backbone = build_backbone(cfg)
    in_ch = backbone.channels["block5"]
    if context_kind == "aspp":
        p = aspp_args(cfg)
        context = ASPP(in_ch, p["channels"], p["rates"], a["dropout"])
    else:
        context = MetroConContext(build_metrocon(in_ch, metrocon_args(cfg), a["head_channels"]), a["dropout"])
    s = spam_args(cfg, backbone.output_stride, a["head_channels"]) if spam else {}
    return SpaceMeshLab(backbone, a["num_classes"], context, head_channels=a["head_channels"], spam=spam,
                        attention=attention, dropout=a["dropout"], aux_head=a["aux_head"],
                        aux_channels=a["aux_channels"], aux_block=a["aux_block"], **s)
