"""The rung self-check (hpo/tuning/rung_check.py): Spearman against a hand-computed rank correlation, the
pairs it completes, its verdict lines. (The value a real search logs to MLflow: test_replay.)"""

from __future__ import annotations

import math

import pytest

from helpers import hand_spearman


@pytest.mark.parametrize("x, y, expected", [
    ([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], -1.0),                    # inverted
    ([1, 2, 3, 4, 5, 6], [0.1, 0.2, 8.0, 9.0, 50.0, 51.0], 1.0),       # monotone, not linear
    ([0, 1, 2, 3, 4, 5, 6, 7], [8, 1, 6, 3, 4, 5, 2, 7], -1 / 21),     # 1 - 6 * 88 / (8 * 63)
    ([1, 2, 2, 3, 5], [2, 1, 4, 4, 9], None),                          # ties: average ranks
])
def test_spearman_on_known_data(x, y, expected):
    from hpo.tuning.rung_check import spearman

    rho = spearman([float(v) for v in x], [float(v) for v in y])
    assert rho == pytest.approx(hand_spearman(x, y), abs=1e-12)
    if expected is not None:
        assert rho == pytest.approx(expected, abs=1e-12)
    assert math.isnan(spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]))      # a constant side: no verdict
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))                 # under 3 trials


def test_rung_correlation_table():
    from hpo.tuning.rung_check import LOW, RungCorrelation, verdict

    check = RungCorrelation([1, 3, 9])
    for i in range(8):
        assert check.add(f"t{i}", 1, float(i)) is None                  # no pair yet
        assert check.add(f"t{i}", 3, float(i) if i % 2 else float(8 - i)) == (1, 3)
    for i in range(4):
        assert check.add(f"t{i}", 9, float(i)) == (3, 9)
    assert check.add("t7", 5, 1.0) is None and check.add("t6", 9, math.nan) is None   # not a milestone / not finite
    (a, b, rho, n), (a2, b2, rho2, n2) = check.table()
    assert (a, b, n) == (1, 3, 8) and rho == pytest.approx(-1 / 21)
    ys = [8.0, 1.0, 6.0, 3.0]                                           # t0..t3 at epoch 3
    assert (a2, b2, n2) == (3, 9, 4) and rho2 == pytest.approx(hand_spearman(ys, [0.0, 1.0, 2.0, 3.0]))
    low = verdict(a, b, rho, n, 9)
    assert low.startswith("rung check: Spearman(epoch 1, epoch 3) = -0.05 over 8 trials: LOW")
    assert "grace_period later than 1" in low
    assert "too few" in verdict(3, 9, rho2, n2, 9)
    ok = verdict(3, 9, LOW, 6, 9)
    assert ok == "rung check: Spearman(epoch 3, epoch 9 = full budget) = 0.70 over 6 trials: early scores rank configs as later ones do"
    assert "LOW" in verdict(3, 9, LOW - 0.01, 6, 9) and "too few" in verdict(3, 9, 0.9, 5, 9)
    assert check.pair(1, 9) == (pytest.approx(hand_spearman([0, 1, 2, 3], [0, 1, 2, 3])), 4)
    assert math.isnan(check.pair(5, 9)[0]) and check.pair(5, 9)[1] == 0


@pytest.mark.parametrize("x, y", [
    ([1, 2, 3], [1, 3, 2]),                    # three trials: the fewest that get a value (0.5)
    ([1, 1, 2, 2], [1, 2, 3, 4]),              # two distinct scores on one side are enough
    ([1, 2, 3, 4], [5, 5, 9, 9]),
])
def test_spearman_needs_three_trials_and_two_distinct_scores_per_side(x, y):
    from hpo.tuning.rung_check import spearman

    assert spearman([float(v) for v in x], [float(v) for v in y]) == pytest.approx(hand_spearman(x, y), abs=1e-12)
    assert spearman([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)


def test_a_pair_is_completed_only_by_the_later_milestone():
    from hpo.tuning.rung_check import RungCorrelation

    check = RungCorrelation([1, 3, 9])
    assert check.add("u", 9, 1.0) is None              # the full budget first (a resumed trial's order)
    assert check.add("u", 1, 2.0) is None              # the first milestone never completes a pair
    assert check.add("u", 3, 2.5) == (1, 3)
    assert check.scores == {"u": {9: 1.0, 1: 2.0, 3: 2.5}}
    assert check.add("v", 3, math.inf) is None and "v" not in check.scores


def test_verdict_lines_say_what_to_change():
    from hpo.tuning.rung_check import verdict

    assert verdict(1, 3, -0.25, 8, 9, unit="validation") == (
        "rung check: Spearman(validation 1, validation 3) = -0.25 over 8 trials: LOW (< 0.7) - scores at "
        "validation 1 rank configs poorly, so ASHA may stop good ones; try scheduler.grace_period later than 1, "
        "a smaller scheduler.reduction_factor, or optim.schedule: wsd with eval.anneal_steps (score an annealed "
        "fork at each rung)")
    assert verdict(3, 9, math.nan, 8, 9) == ("rung check: Spearman(epoch 3, epoch 9 = full budget): 8 trials "
                                             "reached both, too few to judge (need 6)")
    assert verdict(1, 3, 0.95, 6, 9).endswith("= 0.95 over 6 trials: early scores rank configs as later ones do")
