"""Segmentation loss: cross-entropy on the main output plus weighted cross-entropy per aux output.

``total = CE(out) + sum_name loss.aux_weights[name] * CE(aux[name])``. Every aux output the model
emits needs a weight (a forgotten weight is a silent bug in a search, so it is an error); a weight
of 0 skips the term entirely. Pixels equal to ``loss.ignore_index`` (255) are ignored; a batch with
no valid pixel gives 0 rather than NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.config import ConfigError, get_float, get_int, section


def _ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    # sum / #valid == mean CE when any pixel is valid, and 0 (not NaN) when none is
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    valid = (target != ignore_index).sum().clamp_min(1)
    return loss / valid


def seg_loss(outputs: dict, target: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return ``(total, terms)``; ``terms`` holds the *unweighted*, detached CE of ``main`` and of each
    aux output whose weight is non-zero."""
    ignore_index = get_int(cfg, "loss.ignore_index", 255)
    weights = section(cfg, "loss.aux_weights")
    target = target.long()
    main = _ce(outputs["out"], target, ignore_index)
    total, terms = main, {"main": main.detach()}
    for name, logits in (outputs.get("aux") or {}).items():
        if name not in weights:
            raise ConfigError(f"loss.aux_weights.{name}: missing weight for aux output {name!r} "
                              f"(the model emits {', '.join(sorted(outputs['aux']))})")
        w = get_float(cfg, f"loss.aux_weights.{name}", lo=0.0)
        if w == 0.0:
            continue
        term = _ce(logits, target, ignore_index)
        total = total + w * term
        terms[name] = term.detach()
    return total, terms
