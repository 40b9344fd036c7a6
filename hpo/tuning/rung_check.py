"""Rung self-check: do a search's early scores rank its configs the way later scores do?

ASHA stops a trial on its score at a rung; that is only sound if scores at that rung rank configs
as scores at the next rung (and at the full budget) do. For every pair of consecutive milestones
(the ASHA rungs, then the full budget) this computes Spearman's rank correlation over the trials
that reached both. The search logs it to its MLflow parent run as it goes (`rung_corr_<a>_<b>`,
step = number of trials in the pair) and prints one line per pair at the end, with what to change
when it is low; the sensitivity report shows the same table.

Threshold: in a simulation with synthetic curves (issue 11), ASHA with any sampler beat
full-budget random search only when Spearman(first-rung score, final score) was above ~0.7; below
`LOW` the advice line is printed. Fewer than `MIN_PAIRS` trials in a pair: no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LOW = 0.7
MIN_PAIRS = 6


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


@dataclass
class RungCorrelation:
    """Scores per trial at the milestones (validation indices, ascending, the last = full budget)."""
    milestones: list[int]
    mode: str = "max"
    scores: dict[str, dict[int, float]] = field(default_factory=dict)

    def add(self, trial_id: str, step: int, value: float) -> tuple[int, int] | None:
        """Record a result; returns the (a, b) pair it completed for this trial, if any."""
        if step not in self.milestones or not math.isfinite(value):
            return None
        self.scores.setdefault(trial_id, {})[step] = value
        k = self.milestones.index(step)
        if k and self.milestones[k - 1] in self.scores[trial_id]:
            return self.milestones[k - 1], step
        return None

    def pair(self, a: int, b: int) -> tuple[float, int]:
        both = [(s[a], s[b]) for s in self.scores.values() if a in s and b in s]
        if not both:
            return math.nan, 0
        xs, ys = zip(*both)
        return spearman(list(xs), list(ys)), len(both)

    def table(self) -> list[tuple[int, int, float, int]]:
        """(rung a, rung b, rho, trials) for every consecutive pair."""
        return [(a, b, *self.pair(a, b)) for a, b in zip(self.milestones, self.milestones[1:])]


def verdict(a: int, b: int, rho: float, n: int, full: int, unit: str = "epoch") -> str:
    """One line about a pair; says what to change when the correlation is low."""
    label = f"Spearman({unit} {a}, {unit} {b}{' = full budget' if b == full else ''})"
    if n < MIN_PAIRS or not math.isfinite(rho):
        return f"rung check: {label}: {n} trials reached both, too few to judge (need {MIN_PAIRS})"
    line = f"rung check: {label} = {rho:.2f} over {n} trials"
    if rho >= LOW:
        return line + ": early scores rank configs as later ones do"
    return (line + f": LOW (< {LOW}) - scores at {unit} {a} rank configs poorly, so ASHA may stop good ones; "
            "try scheduler.grace_period later than " f"{a}, a smaller scheduler.reduction_factor, or "
            "optim.schedule: wsd with eval.anneal_steps (score an annealed fork at each rung)")
