"""Parameter counts and forward FLOPs per model and preset; with ``--preset toy`` also one timed
forward+backward.

    python -m models.summary [--preset toy|paper] [--models fcn,msglore] [--threads N]

Counts come from models built on PyTorch's meta device (shapes only: no memory, no compute), so the
paper presets summarise in seconds on a laptop CPU. Parameters are grouped by top-level module name:
``backbone`` -> backbone, ``aux*`` -> aux (auxiliary heads, unused at inference), everything else ->
head. FLOPs are ``torch.utils.flop_counter``'s count (2 per multiply-add of convolutions and matrix
products; element-wise ops, pooling and interpolation are not counted) for one forward of a
1x3x512x1024 image in eval mode, aux heads included; MetroCon² is counted in its per-conv reference
form (``impl: naive``), the same function as the fused one. The toy run builds the batch
2x3x128x128, computes ``seg_loss`` with the preset's weights, backpropagates and fails loudly if an
output has the wrong shape or the loss is not finite — it doubles as a smoke test.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from models import build_model, model_names, preset, seg_loss

BATCH = (2, 3, 128, 128)
FLOPS_INPUT = (1, 3, 512, 1024)


def param_groups(model: nn.Module) -> dict[str, int]:
    groups = {"backbone": 0, "head": 0, "aux": 0}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        part = "backbone" if top == "backbone" else ("aux" if top.startswith("aux") else "head")
        groups[part] += p.numel()
    return groups


def meta_counts(cfg: dict) -> tuple[dict[str, int], float]:
    """(parameter groups, forward GFLOPs for one ``FLOPS_INPUT`` image), from a meta-device model."""
    cfg = copy.deepcopy(cfg)
    if isinstance(cfg["model"].get("metrocon"), dict):
        cfg["model"]["metrocon"]["impl"] = "naive"   # same function; the fused op wants a real device
    with torch.device("meta"):
        model = build_model(cfg).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(*FLOPS_INPUT))
    return param_groups(model), counter.get_total_flops() / 1e9


def train_step_seconds(model: nn.Module, cfg: dict) -> tuple[float, float]:
    """One warm-up step, then one timed forward+backward; returns (seconds, loss)."""
    torch.manual_seed(0)
    x = torch.randn(*BATCH)
    target = torch.randint(0, cfg["model"]["num_classes"], (BATCH[0], *BATCH[2:]))
    model.train()
    for step in range(2):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(x)
        loss, _ = seg_loss(out, target, cfg)
        loss.backward()
        seconds = time.perf_counter() - t0
    expected = (BATCH[0], cfg["model"]["num_classes"], *BATCH[2:])
    for name, logits in [("out", out["out"]), *out["aux"].items()]:
        if tuple(logits.shape) != expected:
            raise RuntimeError(f"{name}: output shape {tuple(logits.shape)}, expected {expected}")
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")
    return seconds, loss.item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.summary", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("toy", "paper"), default="paper")
    ap.add_argument("--models", default=None, help="comma-separated model names (default: all registered)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the toy step")
    args = ap.parse_args(argv)
    names = model_names() if not args.models else [n.strip() for n in args.models.split(",") if n.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)

    unknown = [n for n in names if n not in model_names()]
    if unknown:
        print(f"error: --models: unknown {', '.join(unknown)}; expected some of {', '.join(model_names())}",
              file=sys.stderr)
        return 2
    timed = args.preset == "toy"
    header = f"{'model':<14} {'total':>12} {'backbone':>12} {'head':>12} {'aux':>12} {'GFLOPs fwd 1x3x512x1024':>24}"
    if timed:
        header += f"  {'fwd+bwd 2x3x128x128':>20} {'loss':>7}"
    print(f"preset: {args.preset}")
    print(header)
    for name in names:
        cfg = preset(name, args.preset)
        g, gflops = meta_counts(cfg)
        total = sum(g.values())
        line = f"{name:<14} {total:>12,} {g['backbone']:>12,} {g['head']:>12,} {g['aux']:>12,} {gflops:>24,.1f}"
        if timed:
            seconds, loss = train_step_seconds(build_model(cfg), cfg)
            line += f"  {seconds * 1000:>17.0f} ms {loss:>7.3f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
