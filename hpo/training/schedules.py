"""Learning-rate schedules over a trial's budget, as factors of the initial LR per optimizer step.

Why more than the papers' poly: under poly over the whole budget, the LR at ASHA's first rung
(epoch 1 of 9) is still ~90% of its start, so the rung scores a model that has had no annealing,
and early scores rank configs poorly (benchmarks/RESULTS.md, "Can you trust early stopping?").
Two budget-aware options make an early score closer to what the config would reach if it ended
there:

- `poly`      — (1 - t/T)^power over the whole budget T (both papers; the default).
- `wsd`       — warmup-stable-decay: optional linear warmup over `warmup_epochs`, then constant,
                then a linear decay to 0 over the last `decay_fraction` of the budget. Paired with
                annealed evaluation (`eval.anneal_steps`, Trainer.annealed_validate) a rung scores
                a short cool-down fork of the constant-LR run; the run itself continues un-annealed.
- `rung_poly` — poly that reaches 0 at every rung: within the segment [r_k, r_{k+1}) the factor is
                envelope(r_k) * (1 - (t - r_k)/(r_{k+1} - r_k))^power, where envelope is poly over the
                whole budget. A trial is fully annealed whenever ASHA looks at it; a promoted trial
                restarts from the envelope's value (a warm restart, as in SGDR), so the last segment
                is what a full-budget poly run would do from r_K on. `rungs` are epochs; a search fills
                them from its ASHA ladder (hpo.tuning.space validate).

All factors are functions of the step alone (no state), so a resumed run picks up exactly.
"""

from __future__ import annotations

from typing import Callable


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The milestones below max_t at which Ray's ASHAScheduler compares trials (ascending).

    Written as ray.tune.schedulers.async_hyperband._Bracket computes them (numpy logs included,
    so float rounding truncates the same way)."""
    import numpy as np

    max_rungs = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    rungs = {grace_period * reduction_factor ** k for k in range(max_rungs)}
    return sorted(int(r) if float(r).is_integer() else r for r in rungs if r < max_t)


def lr_factor(optim: dict, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Factor of the initial LR at optimizer step `step` (0-based), for `optim` (a normalized section)."""
    power, name = optim["poly_power"], optim["schedule"]
    total = max(total_steps, 1)

    def poly(step: int) -> float:
        return max(0.0, 1.0 - step / total) ** power

    if name == "poly":
        return poly
    if name == "wsd":
        warmup = round(optim["warmup_epochs"] * steps_per_epoch)
        decay_start = round(total * (1.0 - optim["decay_fraction"]))

        def wsd(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if step < decay_start:
                return 1.0
            return max(0.0, 1.0 - (step - decay_start) / max(total - decay_start, 1))

        return wsd
    if name == "rung_poly":
        bounds = [0] + [r * steps_per_epoch for r in (optim["rungs"] or []) if 0 < r * steps_per_epoch < total]
        bounds.append(total)

        def rung_poly(step: int) -> float:
            for start, end in zip(bounds, bounds[1:]):
                if step < end:
                    return poly(start) * max(0.0, 1.0 - (step - start) / (end - start)) ** power
            return 0.0

        return rung_poly
    raise ValueError(f"optim.schedule: unknown schedule {name!r}")
