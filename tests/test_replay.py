"""Replay in simulated time (hpo.simulation), the rung self-check and diverged-trial feedback.

The replay drives the real HonestOptunaSearch / Optuna sampler / Ray ASHAScheduler; the check
against reality runs a real search (local Ray, Optuna journal, MLflow sqlite) and replays its own
logged curves."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import tiny_run_config
from helpers import hand_spearman


def synthetic_source(n: int = 64, max_t: int = 9, seeds: int = 2):
    """Curves that rise to a config-dependent plateau, with per-seed noise and a few divergences."""
    from hpo.simulation.curves import CurveSource

    rng = np.random.default_rng(0)
    dists = {"x": optuna.distributions.FloatDistribution(0.0, 1.0),
             "lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
             "n": optuna.distributions.IntDistribution(1, 8)}
    params = [{"x": float(rng.random()), "lr": float(10 ** rng.uniform(-3, 0)), "n": int(rng.integers(1, 9))}
              for _ in range(n)]
    top = np.array([20 * (1 - (p["x"] - 0.6) ** 2) + p["n"] for p in params])
    t = np.arange(1, max_t + 1)
    curves = top[:, None, None] * (1 - np.exp(-t / 3.0))[None, None, :] + rng.normal(0, 1, (n, seeds, max_t))
    diverged = np.zeros((n, seeds), int)
    for i, p in enumerate(params):
        if p["lr"] > 0.5:
            diverged[i, :] = 2
            curves[i, :, 1:] = np.nan
    return CurveSource("synthetic", dists, params, curves, curves[:, :, -1], diverged,
                       np.ones((n, seeds)) * rng.uniform(0.5, 1.5, (n, 1)))


def test_replay_is_deterministic_for_a_seed():
    from hpo.simulation.simulator import ReplaySettings, replay

    source = synthetic_source()
    settings = ReplaySettings(sampler="tpe", seed=3, grace_period=1, reduction_factor=3, max_concurrent=4,
                              budget_epochs=120)
    first, again = replay(source, settings), replay(source, settings)
    assert first.events == again.events and first.trajectory == again.trajectory
    assert first.epochs == 120
    other = replay(source, ReplaySettings(sampler="tpe", seed=4, grace_period=1, reduction_factor=3,
                                          max_concurrent=4, budget_epochs=120))
    assert other.events != first.events
    statuses = {t.status for t in first.trials}
    assert {"completed", "early_stopped"} <= statuses
    # ASHA really stopped trials at its rungs (1 and 3 for grace 1 / rf 3 / max_t 9)
    assert {t.epochs for t in first.trials if t.status == "early_stopped"} <= {1, 3}
    assert all(t.epochs == 2 for t in first.trials if t.status == "failed")     # diverged at epoch 2


def test_plain_asha_replay_buys_trials_at_ashas_expected_cost():
    """trust raw with an epoch budget and no num_samples: as many trials as the budget buys at ASHA's
    expected epochs per trial; the replay ends when either runs out."""
    from hpo.simulation.simulator import ReplaySettings, expected_epochs_per_trial, replay

    source = synthetic_source()
    budget = 60          # seed 0: the 26 trials it buys end before the budget does
    n = math.ceil(budget / expected_epochs_per_trial(9, 1, 3))
    res = replay(source, ReplaySettings(sampler="random", trust="raw", grace_period=1, reduction_factor=3,
                                        max_concurrent=1, budget_epochs=budget))
    assert len(res.trials) <= n
    assert len(res.trials) == n or res.epochs >= budget, (len(res.trials), n, res.epochs)


def test_replay_snaps_to_the_nearest_config_and_scores_regret():
    from hpo.simulation.simulator import ReplaySettings, replay

    source = synthetic_source()
    assert source.snap(source.params[7]) == 7
    res = replay(source, ReplaySettings(sampler="random", scheduler="none", max_concurrent=2, num_samples=64))
    assert res.trajectory, "random search over all configs completes some"
    best = res.trajectory[-1]
    assert res.best_quality - best[2] == pytest.approx(res.regret_at(res.epochs))
    assert res.regret_at(0) == math.inf


def hand_unit(p: dict) -> list[float]:
    """synthetic_source's space in the unit cube, written out: x linear, lr on its log scale, n over 1..8."""
    return [p["x"], (math.log(p["lr"]) - math.log(1e-3)) / (math.log(1.0) - math.log(1e-3)), (p["n"] - 1) / 7]


def test_snap_picks_the_nearest_config_of_a_perturbed_point():
    source = synthetic_source()
    known = [hand_unit(p) for p in source.params]
    rng = np.random.default_rng(11)
    for i in (0, 7, 30, 63):
        assert source.snap(source.params[i]) == i
        # a point moved by less than half the distance to its nearest neighbour still snaps to it
        gap = min(math.dist(known[i], k) for j, k in enumerate(known) if j != i)
        p = dict(source.params[i])
        p["x"] = min(1.0, max(0.0, p["x"] + 0.4 * gap * (1 if p["x"] < 0.5 else -1)))
        assert source.snap(p) == i
    for _ in range(40):       # any point: the config at the smallest distance computed here
        p = {"x": float(rng.random()), "lr": float(10 ** rng.uniform(-3, 0)), "n": int(rng.integers(1, 9))}
        u = hand_unit(p)
        assert source.snap(p) == int(np.argmin([math.dist(u, k) for k in known]))
    # a point off by a whole log decade in lr is nearer to a config with the right lr than the same x
    two = type(source)("two", source.distributions, [{"x": 0.5, "lr": 0.001, "n": 4}, {"x": 0.6, "lr": 0.1, "n": 4}],
                       source.curves[:2], source.finals[:2], source.diverged_at[:2], source.epoch_seconds[:2])
    assert two.snap({"x": 0.5, "lr": 0.1, "n": 4}) == 1 and two.snap({"x": 0.6, "lr": 0.0012, "n": 4}) == 0


def test_quality_and_regret_computed_by_hand():
    from hpo.simulation.simulator import ReplaySettings, replay

    source = synthetic_source()
    quality = []
    for c in range(len(source.params)):          # mean final score over the seeds that reached the end
        finals = [v for v in source.finals[c] if not math.isnan(v)]
        quality.append(sum(finals) / len(finals) if finals else math.nan)
    np.testing.assert_allclose(source.quality(), quality, equal_nan=True)
    best = max(q for q in quality if not math.isnan(q))
    res = replay(source, ReplaySettings(sampler="random", scheduler="none", max_concurrent=2, num_samples=64))
    assert res.best_quality == pytest.approx(best)
    # the returned config: the completed trial with the best observed final score (the leaderboard's pick)
    done = [t for t in res.trials if t.status == "completed"]
    assert done and all(t.epochs == source.max_t for t in done)
    for t in done:
        assert t.last == pytest.approx(source.curves[t.config, t.seed, -1])
    returned = max(done, key=lambda t: source.curves[t.config, t.seed, -1])
    assert res.regret_at(res.epochs) == pytest.approx(best - quality[returned.config])
    assert res.regret_at(10 ** 9) == res.regret_at(res.epochs) and res.regret_at(0) == math.inf
    assert res.epochs_to(quality[returned.config]) <= res.epochs
    assert res.epochs_to(best + 1.0) is None


@pytest.mark.parametrize("max_t, grace, rf, expected", [
    (9, 1, 3, 1 + 2 / 3 + 6 / 9),      # rungs 1, 3: all train 1, a third 2 more, a ninth 6 more
    (9, 3, 3, 3 + 6 / 3),              # one rung at 3
    (8, 1, 2, 1 + 1 / 2 + 2 / 4 + 4 / 8),
    (4, 4, 3, 4.0),                    # no rung below max_t: every trial trains the full budget
])
def test_expected_epochs_per_trial_by_hand(max_t, grace, rf, expected):
    from hpo.simulation.simulator import expected_epochs_per_trial

    assert expected_epochs_per_trial(max_t, grace, rf) == pytest.approx(expected)


def test_snap_leaves_out_excluded_configs_unless_all_are():
    source = synthetic_source()
    known = [hand_unit(p) for p in source.params]
    u = known[7]
    second = sorted(range(len(known)), key=lambda j: math.dist(u, known[j]))[1]
    assert source.snap(source.params[7], exclude={7}) == second
    assert source.snap(source.params[7], exclude=set(range(len(known)))) == 7     # nothing left: plain nearest
    assert source.epochs.tolist() == list(range(1, source.max_t + 1))            # validations 1..max_t
    assert [source.cost(step) for step in (1, 2, source.max_t)] == [1, 1, 1]


def test_regret_and_epochs_to_on_a_known_trajectory():
    from hpo.simulation.simulator import ReplayResult

    res = ReplayResult(trials=[], events=[], trajectory=[(5, 10.0, 8.0), (9, 12.0, 9.5)], epochs=12,
                       best_quality=10.0)
    assert res.regret_at(4) == math.inf
    assert res.regret_at(5) == pytest.approx(2.0) and res.regret_at(8) == pytest.approx(2.0)
    assert res.regret_at(9) == pytest.approx(0.5) and res.regret_at(12) == pytest.approx(0.5)
    assert res.epochs_to(8.0) == 5 and res.epochs_to(9.0) == 9 and res.epochs_to(9.6) is None


def test_diverged_trials_feedback_to_optuna():
    """pruned (default): PRUNED with the scores it had; worst: COMPLETE at the worst score seen; fail: FAIL."""
    from hpo.tuning.searcher import HonestOptunaSearch

    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    for mode, state in [("pruned", optuna.trial.TrialState.PRUNED), ("worst", optuna.trial.TrialState.COMPLETE),
                        ("fail", optuna.trial.TrialState.FAIL)]:
        s = HonestOptunaSearch(space, "val_miou", "max", max_t=3, diverged_feedback=mode,
                               sampler=optuna.samplers.RandomSampler(seed=0))
        s.suggest("good")
        for step, v in [(1, 5.0), (2, 7.0)]:
            s.on_trial_result("good", {"val_miou": v, "training_iteration": step})
        s.on_trial_complete("good", {"val_miou": 9.0, "training_iteration": 3})
        s.suggest("nan")
        s.on_trial_result("nan", {"val_miou": 3.0, "training_iteration": 1})
        s.on_trial_complete("nan", {"status": "diverged", "training_iteration": 2})   # as hpo/execution/trainable.py reports
        trial = s.study.trials[1]
        assert trial.state == state, mode
        assert trial.user_attrs["diverged"] is True
        if mode == "worst":
            assert trial.value == 3.0          # the worst score any trial reported
        if mode == "pruned":
            assert trial.intermediate_values == {1: 3.0}


# --- against a real search -------------------------------------------------------------------

REAL = dict(num_samples=8, max_t=3, grace=1, rf=2)


@pytest.fixture(scope="module")
def real_search(ray_local, tiny_data, tmp_path_factory):
    """A small real search, one trial at a time (so the replay sees the same order), random sampler."""
    import os

    from hpo import search

    tmp = tmp_path_factory.mktemp("replay")
    base = tiny_run_config(tiny_data)
    base["budget"]["epochs"] = REAL["max_t"]
    base["eval"]["overlays"] = 0
    space = {
        "experiment": {"name": "realreplay", "storage_path": str(tmp / "ray_results"),
                       "tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
        "base": base,
        "space": {"model.selection.n3": {"type": "int", "low": 2, "high": 16},
                  "loss.aux_weights.selection": {"type": "float", "low": 0.1, "high": 1.5},
                  "optim.lr": {"type": "float", "low": 1e-3, "high": 0.2, "log": True}},
        "search": {"sampler": "random", "seed": 5, "num_samples": REAL["num_samples"], "max_concurrent": 1},
        "scheduler": {"name": "asha", "max_t": REAL["max_t"], "grace_period": REAL["grace"],
                      "reduction_factor": REAL["rf"], "trust": "raw"},      # Ray's ASHA: its decisions replayed
        "resources": {"cpu": 1, "gpu": 0},
    }
    path = tmp / "realreplay.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        assert search.main([str(path), "--no-report"]) == 0
    finally:
        os.chdir(cwd)
    return tmp


def test_replaying_a_real_search_reproduces_its_asha_decisions(real_search):
    from hpo.simulation.curves import from_search
    from hpo.simulation.simulator import ReplaySettings, replay
    from hpo.results.handle import find_search

    found = find_search("realreplay", str(real_search / "ray_results"))
    real = [(t.status, t.last_step) for t in found.trials]
    assert len(real) == REAL["num_samples"]
    assert {"completed", "early_stopped"} <= {s for s, _ in real}, real
    source = from_search(found)
    res = replay(source, ReplaySettings(sampler="random", seed=5, grace_period=REAL["grace"], trust="raw",
                                        reduction_factor=REAL["rf"], max_concurrent=1,
                                        num_samples=REAL["num_samples"]))
    # the same sampler and seed suggest the same configs, and ASHA decides the same on the same curves
    assert [source.params[t.config] for t in res.trials] == [t.params for t in found.trials]
    assert [(t.status, t.epochs) for t in res.trials] == real


def test_replay_cli_on_a_finished_search(real_search, capsys):
    from hpo import replay

    rc = replay.main(["realreplay", "--storage-path", str(real_search / "ray_results"), "--grace", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "replay of search realreplay: random, ASHA (raw) grace 2" in out
    assert replay.main(["nosuchsearch", "--storage-path", str(real_search / "ray_results")]) == 2
    assert "no search 'nosuchsearch'" in capsys.readouterr().err


def test_rung_correlation_is_logged_to_the_parent_run(real_search):
    client = MlflowClient(f"sqlite:///{real_search}/mlflow.db")
    exp = client.get_experiment_by_name("realreplay")
    parent = client.search_runs([exp.experiment_id], "tags.`ctxtune.search` = 'realreplay'")[0]
    history = client.get_metric_history(parent.info.run_id, "rung_corr_1_2")
    assert history, sorted(parent.data.metrics)
    assert all(-1.0 <= m.value <= 1.0 for m in history)
    assert [m.step for m in history] == sorted(m.step for m in history)       # step = trials in the pair
    # the last value logged is Spearman over every trial that reached both rungs, computed here by hand
    from hpo.results.handle import find_search

    trials = find_search("realreplay", str(real_search / "ray_results")).trials
    both = [(t.curve[1], t.curve[2]) for t in trials if 1 in t.curve and 2 in t.curve]
    last = max(history, key=lambda m: m.step)
    assert last.step == len(both)
    assert last.value == pytest.approx(hand_spearman(*map(list, zip(*both))), abs=1e-9)
    text = client.download_artifacts(parent.info.run_id, "rung_check.txt", str(real_search))
    lines = open(text).read().splitlines()
    assert lines[0].startswith("rung check: Spearman(epoch 1, epoch 2)")
    assert parent.data.tags["rung_check"] in ("ok", "low")
