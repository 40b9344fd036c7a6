"""Priors from the paper's defaults: a share of trials drawn around them, the rest from the sampler."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from hpo.tuning.priors import PriorMixSampler, draw_near

SPACE = {"n3": optuna.distributions.IntDistribution(2, 64),
         "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
         "grid": optuna.distributions.CategoricalDistribution(["paper3", "dense9", "dense18"])}
DEFAULTS = {"n3": 11, "lr": 0.02, "grid": "dense18"}


def unit_lr(v: float) -> float:
    return (math.log(v) - math.log(1e-4)) / (math.log(1e-1) - math.log(1e-4))


def ask_many(share: float, n: int = 300, seed: int = 0) -> tuple[list[dict], PriorMixSampler]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = PriorMixSampler(optuna.samplers.RandomSampler(seed=seed), DEFAULTS, share=share, width=0.1, seed=seed)
    study = optuna.create_study(sampler=sampler)
    params = []
    for _ in range(n):
        t = study.ask(SPACE)
        params.append(dict(t.params, number=t.number))
        study.tell(t, 0.0)
    return params, sampler


def test_a_share_of_trials_is_drawn_around_the_defaults():
    params, sampler = ask_many(share=0.3)
    prior = [p for p in params if sampler.is_prior_trial(p["number"])]
    other = [p for p in params if not sampler.is_prior_trial(p["number"])]
    assert 0.22 < len(prior) / len(params) < 0.38
    # prior trials sit near the defaults (width 0.1 of the range, log scale for lr); the others do not
    near = lambda ps: np.median([abs(unit_lr(p["lr"]) - unit_lr(0.02)) for p in ps])  # noqa: E731
    assert near(prior) < 0.1 < near(other)
    assert np.median([abs(p["n3"] - 11) for p in prior]) <= 6 < np.median([abs(p["n3"] - 11) for p in other])
    assert sum(p["grid"] == "dense18" for p in prior) / len(prior) > 0.8
    assert all(SPACE["n3"].low <= p["n3"] <= SPACE["n3"].high and 1e-4 <= p["lr"] <= 0.1 for p in params)


def test_prior_draws_are_reproducible_and_off_at_share_zero():
    a, _ = ask_many(share=0.3, n=40, seed=5)
    b, _ = ask_many(share=0.3, n=40, seed=5)
    assert a == b
    off, sampler = ask_many(share=0.0, n=40, seed=5)
    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    for p in off:
        t = plain.ask(SPACE)
        assert dict(t.params, number=t.number) == p       # the wrapped sampler's own draws, untouched
        plain.tell(t, 0.0)
    assert not any(sampler.is_prior_trial(p["number"]) for p in off)


def test_draw_near_respects_steps_and_bounds():
    rng = np.random.default_rng(0)
    stepped = optuna.distributions.FloatDistribution(0.1, 1.5, step=0.1)
    for _ in range(200):
        v = draw_near(stepped, 1.5, 0.3, rng)          # the default at the edge: draws stay inside
        assert 0.1 <= v <= 1.5 and abs(round(v / 0.1) * 0.1 - v) < 1e-9
    assert draw_near(SPACE["n3"], None, 0.1, rng) in range(2, 65)   # no default: uniform


def test_fading_share_is_share_times_d_over_d_plus_n():
    sampler = PriorMixSampler(optuna.samplers.RandomSampler(seed=0), DEFAULTS, share=0.5, seed=0, decay=10)
    for n, expected in [(0, 0.5), (1, 0.5 * 10 / 11), (10, 0.25), (30, 0.125), (990, 0.005)]:
        assert sampler.share_at(n) == pytest.approx(expected, rel=1e-12)
    constant = PriorMixSampler(optuna.samplers.RandomSampler(seed=0), DEFAULTS, share=0.3, seed=0)
    assert [constant.share_at(n) for n in (0, 10, 1000)] == [0.3, 0.3, 0.3]


def test_prior_trials_thin_out_as_the_share_fades():
    """Which trials are prior trials: per trial a draw below share_at(n), so over a window of trial
    numbers the count follows the sum of the fading shares (binomial spread), not the constant share."""
    sampler = PriorMixSampler(optuna.samplers.RandomSampler(seed=0), DEFAULTS, share=0.5, seed=7, decay=1000)
    for lo, hi in [(0, 1000), (1000, 3000), (3000, 9000)]:
        count = sum(sampler.is_prior_trial(n) for n in range(lo, hi))
        p = [0.5 * 1000 / (1000 + n) for n in range(lo, hi)]
        mean, sd = sum(p), math.sqrt(sum(q * (1 - q) for q in p))
        assert abs(count - mean) < 4 * sd, (lo, hi, count, mean)
        assert count < 0.5 * (hi - lo) - 4 * sd                         # far below the constant share


def test_shipped_default_prior_fades_in_a_real_study():
    """The shipped default (share 0.5, halved after decay = 10 trials): trials drawn near the defaults
    are the prior trials, many early, few late; the demo space's sampler is built that way."""
    from pathlib import Path

    from hpo.tuning.space import load_space, make_sampler

    demo = make_sampler(load_space(Path(__file__).parents[1] / "search_spaces" / "demo.yaml"))
    assert isinstance(demo, PriorMixSampler) and (demo.share, demo.decay) == (0.5, 10)
    assert demo.share_at(10) == pytest.approx(0.25)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = PriorMixSampler(optuna.samplers.RandomSampler(seed=0), DEFAULTS, share=0.5, width=0.01, seed=0,
                              decay=10)
    study = optuna.create_study(sampler=sampler)
    near = []
    for _ in range(200):
        t = study.ask(SPACE)
        p = t.params
        near.append(abs(unit_lr(p["lr"]) - unit_lr(0.02)) < 0.05 and abs(p["n3"] - 11) <= 3
                    and p["grid"] == "dense18")
        study.tell(t, 0.0)
    prior = [sampler.is_prior_trial(n) for n in range(200)]
    assert all(near[n] for n in range(200) if prior[n])                  # a prior trial sits at the defaults
    assert sum(near) - sum(prior) <= 4                                    # random draws rarely land there
    expected = lambda lo, hi: sum(0.5 * 10 / (10 + n) for n in range(lo, hi))  # noqa: E731
    assert expected(0, 20) == pytest.approx(5.66, abs=0.01) and expected(100, 200) == pytest.approx(3.2, abs=0.05)
    assert 2 <= sum(near[:20]) <= 11                                      # constant share: ~10 of 20
    assert sum(near[100:]) <= 9                                           # constant share: ~50 of 100


def hand_draw(low, high, default, width, rng, log=False, step=None, integer=False):
    """draw_near written out: a normal around the default in the unit scale, redrawn until inside
    [0, 1], mapped back (exp for log knobs), rounded to the step, clipped to the range."""
    lo, hi = (math.log(low), math.log(high)) if log else (low, high)
    centre = ((math.log(default) if log else default) - lo) / (hi - lo)
    u = rng.normal(centre, width)
    while not 0.0 <= u <= 1.0:
        u = rng.normal(centre, width)
    x = lo + u * (hi - lo)
    x = math.exp(x) if log else x
    if integer:
        return int(min(max(low + round((x - low) / (step or 1)) * (step or 1), low), high))
    if step is not None:
        x = low + round((x - low) / step) * step
    return float(min(max(x, low), high))


@pytest.mark.parametrize("dist, default, width, kw", [
    (optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True), 0.02, 0.1, {"log": True}),
    (optuna.distributions.FloatDistribution(0.0, 1.0), 0.3, 0.2, {}),                    # a range of width 1
    (optuna.distributions.FloatDistribution(0.1, 1.5, step=0.1), 1.4, 0.5, {"step": 0.1}),  # near the top
    (optuna.distributions.IntDistribution(2, 64, step=2), 12, 0.3, {"step": 2, "integer": True}),
    (optuna.distributions.IntDistribution(1, 64, log=True), 8, 0.2, {"log": True, "integer": True}),
])
def test_draw_near_by_hand(dist, default, width, kw):
    for seed in range(20):
        expected = hand_draw(dist.low, dist.high, default, width, np.random.default_rng(seed), **kw)
        assert draw_near(dist, default, width, np.random.default_rng(seed)) == pytest.approx(expected, abs=1e-12)


def test_a_categorical_default_outside_the_choices_is_never_drawn():
    rng = np.random.default_rng(0)
    assert {draw_near(SPACE["grid"], "paper9", 0.1, rng) for _ in range(50)} <= set(SPACE["grid"].choices)


def test_which_trials_are_prior_trials_and_their_draws_by_hand():
    """Per trial: the stream [seed, number, 1] decides (below share_at(n)); a prior trial's knob is drawn
    from the stream [seed, number, 2, sum((i + 1) * ord(c)) % 2**31 over the knob's name]."""
    sampler = PriorMixSampler(optuna.samplers.RandomSampler(seed=0), DEFAULTS, share=0.4, width=0.1, seed=9,
                              decay=20)
    for n in range(60):
        u = np.random.default_rng([9, n, 1]).random()
        assert sampler.is_prior_trial(n) == (u < 0.4 * 20 / (20 + n))
    plain = PriorMixSampler(optuna.samplers.RandomSampler(seed=0), DEFAULTS)
    assert (plain.share, plain.width, plain.seed, plain.decay) == (0.2, 0.15, 0, None)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    stream = sum((i + 1) * ord(c) for i, c in enumerate("lr")) % 2**31
    checked = 0
    for _ in range(30):
        t = study.ask(SPACE)
        if sampler.is_prior_trial(t.number):
            rng = np.random.default_rng([9, t.number, 2, stream])
            assert t.params["lr"] == pytest.approx(hand_draw(1e-4, 1e-1, 0.02, 0.1, rng, log=True), rel=1e-12)
            checked += 1
        study.tell(t, 0.0)
    assert checked >= 3


def test_a_non_prior_trial_is_exactly_the_wrapped_samplers_own():
    """With no prior trial at all, the mix asks, learns and tells exactly as the TPE it wraps."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {k: SPACE[k] for k in ("n3", "lr")}

    def tpe():
        return optuna.samplers.TPESampler(seed=4, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=3)

    runs = []
    for sampler in (tpe(), PriorMixSampler(tpe(), DEFAULTS, share=1e-12, seed=4)):
        study = optuna.create_study(sampler=sampler)
        params = []
        for _ in range(10):
            t = study.ask(space)
            params.append(t.params)
            study.tell(t, -abs(t.params["n3"] - 20) - abs(math.log10(t.params["lr"]) + 2))
        runs.append(params)
    assert runs[0] == runs[1]
