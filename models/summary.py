"""Parameter counts per model and preset; with ``--preset toy`` also one timed forward+backward.

    python -m models.summary [--preset toy|paper] [--models fcn,msglore] [--threads N]

Paper-size models are only constructed (no forward), so this runs on a laptop CPU. Parameters are
grouped by top-level module name: ``backbone`` -> backbone, ``aux*`` -> aux (auxiliary heads, unused
at inference), everything else -> head. The toy run builds the batch 2x3x128x128, computes
``seg_loss`` with the preset's weights, backpropagates and fails loudly if an output has the wrong
shape or the loss is not finite — it doubles as a smoke test.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn as nn

from models import build_model, model_names, preset, seg_loss

BATCH = (2, 3, 128, 128)


def param_groups(model: nn.Module) -> dict[str, int]:
    groups = {"backbone": 0, "head": 0, "aux": 0}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        part = "backbone" if top == "backbone" else ("aux" if top.startswith("aux") else "head")
        groups[part] += p.numel()
    return groups


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
    header = f"{'model':<14} {'total':>12} {'backbone':>12} {'head':>12} {'aux':>12}"
    if timed:
        header += f"  {'fwd+bwd 2x3x128x128':>20} {'loss':>7}"
    print(f"preset: {args.preset}")
    print(header)
    for name in names:
        cfg = preset(name, args.preset)
        model = build_model(cfg)
        g = param_groups(model)
        total = sum(g.values())
        line = f"{name:<14} {total:>12,} {g['backbone']:>12,} {g['head']:>12,} {g['aux']:>12,}"
        if timed:
            seconds, loss = train_step_seconds(model, cfg)
            line += f"  {seconds * 1000:>17.0f} ms {loss:>7.3f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
