"""Priors from the paper: draw a share of a search's configs around each knob's `default:`.

A searched knob may carry `default:` (the paper's value: N3/N4/N5 = 11/21/32, alpha = 0.7). The
search evaluates the defaults first (one enqueued point, hpo.tuning.space `encoded_points`), and with
`search.prior.share` > 0 the sampler becomes `PriorMixSampler`: each trial is, with probability
`share` (drawn from the search seed and the trial number, so a replay or a resume makes the same
choice), a *prior trial* whose knobs are drawn around their defaults, and otherwise a trial of the
configured sampler (TPE, random, ...), which still learns from every trial's result.

Around a default: for numeric knobs a normal distribution centred on it in the knob's unit scale
(log knobs on their log scale), standard deviation `width` of the range, redrawn until inside the
range, then rounded to the knob's step; for a categorical knob the default with probability
1 - width, else a uniform choice. Knobs without a default are drawn uniformly in a prior trial.

This is PriorBand's idea (Mallik et al., 2023: mix prior samples into a multi-fidelity search)
without its budget-dependent schedule: a fixed share. Whether it helps is measured, not assumed
(benchmarks/search_efficiency.py, "prior" rows).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler


class PriorMixSampler(BaseSampler):
    def __init__(self, base: BaseSampler, defaults: dict[str, Any], share: float = 0.2, width: float = 0.15,
                 seed: int = 0, decay: float | None = None):
        self.base, self.defaults, self.share, self.width, self.seed = base, dict(defaults), share, width, seed
        self.decay = decay

    def share_at(self, number: int) -> float:
        """The prior's share for trial `number`: constant, or with `decay` d, share * d / (d + number)
        (halved after d trials; as piBO's prior weight fades with the evidence)."""
        return self.share if not self.decay else self.share * self.decay / (self.decay + number)

    def is_prior_trial(self, number: int) -> bool:
        return bool(np.random.default_rng([self.seed, number, 1]).random() < self.share_at(number))

    # --- Optuna's sampler interface ---------------------------------------------------------------
    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if self.is_prior_trial(trial.number):
            return {}        # every knob comes from sample_independent, drawn around its default
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if self.is_prior_trial(trial.number):
            rng = np.random.default_rng([self.seed, trial.number, 2, _stable(param_name)])
            return draw_near(param_distribution, self.defaults.get(param_name), self.width, rng)
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def _stable(name: str) -> int:
    """A per-knob stream that does not depend on Python's hash seed."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % (2**31)


def draw_near(dist: BaseDistribution, default: Any, width: float, rng: np.random.Generator) -> Any:
    """One value of `dist` near `default` (uniform when there is no default)."""
    if isinstance(dist, CategoricalDistribution):
        if default in dist.choices and rng.random() >= width:
            return default
        return dist.choices[int(rng.integers(len(dist.choices)))]
    log = getattr(dist, "log", False)
    lo, hi = (math.log(dist.low), math.log(dist.high)) if log else (float(dist.low), float(dist.high))
    span = hi - lo
    if default is None or span == 0:
        u = rng.random()
    else:
        centre = ((math.log(default) if log else float(default)) - lo) / span
        u = -1.0
        while not 0.0 <= u <= 1.0:
            u = rng.normal(centre, width)
    x = lo + u * span
    x = math.exp(x) if log else x
    if isinstance(dist, IntDistribution):
        value = dist.low + round((x - dist.low) / dist.step) * dist.step
        return int(min(max(value, dist.low), dist.high))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        x = dist.low + round((x - dist.low) / dist.step) * dist.step
    return float(min(max(x, dist.low), dist.high))


def with_priors(sampler: BaseSampler, distributions: dict[str, BaseDistribution], defaults: dict[str, Any],
                share: float, width: float, seed: int, decay: float | None = None) -> BaseSampler:
    """`sampler` mixed with prior draws, or `sampler` itself when there is nothing to mix."""
    defaults = {k: v for k, v in defaults.items() if k in distributions and v is not None}
    if not defaults or share <= 0:
        return sampler
    return PriorMixSampler(sampler, defaults, share, width, seed, decay)

