"""Calibrated early stopping (hpo/tuning/calibrated.py): what it cuts on, what it tells the sampler, what
survives a resume, and that the replay runs the very scheduler a search builds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from hpo.tuning.calibrated import CalibratedASHA
from hpo.tuning.factory import make_scheduler
from hpo.trials import CALIBRATION_FILE
from hpo.tuning.calibration import (PASS, PREDICTED, RAW, RidgeLOO, conformal_margin, lower_bound,
                             spearman, unit_encoder)


class Stub:
    """What the scheduler reads of a Ray Trial: its id and config (nothing else)."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config = trial_id, config


def _dist():
    import optuna

    return {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}


def _scheduler(**kw) -> CalibratedASHA:
    args = dict(max_t=9, grace_period=1, reduction_factor=3,
                encode=unit_encoder(_dist()), cold_start=8, audit_share=0.0, rho_min=0.5)
    s = CalibratedASHA(**{**args, **kw})
    assert s.set_search_properties("score", "max")        # as Tune does
    return s


def _run(s: CalibratedASHA, tid: str, x: float, curve: dict[int, float]) -> str:
    """Add a trial and feed it `curve` ({validation: score}) until the scheduler stops it or it ends."""
    trial = Stub(tid, {"x": x})
    s.on_trial_add(None, trial)
    decision = TrialScheduler.CONTINUE
    for step in sorted(curve):
        decision = s.on_trial_result(None, trial, {"training_iteration": step, "score": curve[step]})
        if decision == TrialScheduler.STOP:
            if step < s.max_t:
                s.on_trial_complete(None, trial, {"training_iteration": step, "score": curve[step]})
                return "stopped"
            break
    s.on_trial_complete(None, trial, {"training_iteration": max(curve), "score": curve[max(curve)]})
    return "completed"


def inverted_curve(x: float) -> dict[int, float]:
    """Final = 10 x (the config says it all); epoch 1 ranks backwards (high x starts low)."""
    return {1: 10 * (1 - x), 3: 5.0, 9: 10 * x}


def test_statistics_match_independent_computations():
    from scipy.stats import norm, spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert spearman(a, -a) == pytest.approx(-1.0) and spearman(a, 3 * a + 1) == pytest.approx(1.0)
    # Fisher z: tanh(atanh(0.6) - z_0.8 / sqrt(n - 3))
    assert lower_bound(0.6, 28, 0.8) == pytest.approx(math.tanh(math.atanh(0.6) - norm.ppf(0.8) / 5))
    # leave-one-out predictions equal refits without each point (ridge with an unpenalised intercept on
    # the features as the full fit standardised them)
    X, y = rng.normal(size=(12, 3)), rng.normal(size=12)
    model = RidgeLOO(X, y, penalty=1.0)
    Z = np.hstack([np.ones((12, 1)), (X - X.mean(0)) / (X.std(0) + 1e-9)])
    P = np.diag([0.0, 1.0, 1.0, 1.0])
    for i in (0, 5, 11):
        keep = np.arange(12) != i
        w = np.linalg.solve(Z[keep].T @ Z[keep] + P, Z[keep].T @ y[keep])
        assert model.loo[i] == pytest.approx(Z[i] @ w)
    # split-conformal: the ceil((n+1) * 0.9)-th smallest |residual|
    r = np.arange(1.0, 20.0)         # 19 residuals: ceil(20 * 0.9) = 18th smallest = 18
    assert conformal_margin(-r, 0.9) == 18.0


def test_inverted_rung_is_never_cut_on_the_raw_score():
    """Epoch-1 scores rank configs backwards: the scheduler must cut on the prediction (the config
    predicts the final) or pass, never on the raw score; what it cuts really is bad."""
    s = _scheduler()
    xs = np.random.default_rng(1).uniform(size=40)
    outcome = {f"t{i}": _run(s, f"t{i}", float(x), inverted_curve(float(x))) for i, x in enumerate(xs)}
    assert s.rungs[1].mode == PREDICTED and s.rungs[1].rho_raw < 0 < s.rungs[1].rho_pred
    assert s.rungs[1].lb_pred >= 0.5
    stopped = [i for i, (t, o) in enumerate(outcome.items()) if o == "stopped"]
    assert stopped, "a trusted predictor with no noise cuts the bad configs"
    # every cut config is worse than every config a raw-score cut would have dropped instead
    best_final = max(10 * x for x in xs[:8])
    assert all(10 * xs[i] < best_final for i in stopped)
    # the estimate told to the sampler is the predicted final (about 10 x), not the epoch-1 score
    for i in stopped:
        assert s.estimate(f"t{i}") == pytest.approx(10 * xs[i], abs=1.5)
    assert all(s.estimate(f"t{i}") is None for i in range(8))   # cold start: never cut


def test_uninformative_rung_passes():
    """Neither the rung score nor the config predicts the final (pure noise): no cut at all."""
    s = _scheduler()
    rng = np.random.default_rng(2)
    outcomes = [_run(s, f"t{i}", float(rng.uniform()), {1: float(rng.normal()), 9: float(rng.normal())})
                for i in range(40)]
    assert outcomes.count("stopped") == 0
    assert s.rungs[1].mode == PASS and s.rungs[1].cut == 0


def test_well_ranked_rung_cuts_on_the_raw_score():
    s = _scheduler(encode=lambda config: [0.5])       # the config says nothing; the rung says everything
    xs = np.random.default_rng(3).uniform(size=40)
    outcomes = [_run(s, f"t{i}", float(x), {1: 3 * x, 3: 5 * x, 9: 10 * x}) for i, x in enumerate(xs)]
    assert s.rungs[1].mode in (RAW, PREDICTED) and s.rungs[1].rho_raw == pytest.approx(1.0)
    assert outcomes.count("stopped") >= 15


def test_audits_are_never_cut():
    s = _scheduler(audit_share=0.25)
    xs = np.random.default_rng(4).uniform(size=40)
    out = {f"t{i}": _run(s, f"t{i}", float(x), inverted_curve(float(x))) for i, x in enumerate(xs)}
    audits = [t for t in out if s.is_audit(t)]
    assert len(audits) == 8 + 8           # cold start + every 4th of the 32 after it
    assert all(out[t] == "completed" for t in audits)


def test_state_survives_a_restart(tmp_path):
    """A resumed search builds a fresh scheduler; it reloads the state file and decides as before."""
    path = str(tmp_path / CALIBRATION_FILE)
    xs = np.random.default_rng(5).uniform(size=30)
    first = _scheduler(state_path=path)
    for i, x in enumerate(xs[:25]):
        _run(first, f"t{i}", float(x), inverted_curve(float(x)))
    saved = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert len(saved["final"]) == sum(1 for i in range(25) if first.estimate(f"t{i}") is None)
    again = _scheduler(state_path=path)
    twin = _scheduler()
    twin.s = first.s.from_json(first.s.to_json())
    for i, x in enumerate(xs[25:], 25):
        assert _run(again, f"t{i}", float(x), inverted_curve(float(x))) == \
            _run(twin, f"t{i}", float(x), inverted_curve(float(x)))
    assert again.s.final == twin.s.final and again.s.estimates == twin.s.estimates
    assert again.rungs[1].cut == twin.rungs[1].cut > 0


def test_make_scheduler_follows_the_space_file(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from hpo.tuning.space import SchedulerSection

    d = _dist()
    assert isinstance(make_scheduler(SchedulerSection(max_t=9), d, 2), CalibratedASHA)
    assert isinstance(make_scheduler(SchedulerSection(max_t=9, trust="raw"), d, 2), ASHAScheduler)
    assert type(make_scheduler(SchedulerSection(name="none", max_t=9), d, 2)) is FIFOScheduler
    s = make_scheduler(SchedulerSection(max_t=9, grace_period=1, reduction_factor=3,
                                        calibration={"cold_start": 4, "audit_share": 0.2, "rho_min": 0.3}), d, 4)
    assert (s.cold_start, s.audit_share, s.rho_min, s.milestones) == (4, 0.2, 0.3, [1, 3])
    assert make_scheduler(SchedulerSection(max_t=9), d, 6).cold_start == 12      # max(8, 2 x concurrent)


def test_make_searcher_follows_the_space_file():
    """The searcher the real search and the replay both build: the search section's feedback
    settings, and the calibrated scheduler's predicted finals for the trials it cuts."""
    import optuna

    from hpo.tuning.factory import make_searcher
    from hpo.tuning.space import SchedulerSection, SearchSection

    d = _dist()
    scheduler = make_scheduler(SchedulerSection(max_t=9), d, 2)
    searcher = make_searcher(d, "val_miou", "max", optuna.samplers.RandomSampler(seed=0), max_t=9,
                             search=SearchSection(feedback="complete", diverged_feedback="worst"),
                             scheduler=scheduler)
    assert (searcher.feedback, searcher.diverged_feedback, searcher.max_t) == ("complete", "worst", 9)
    assert searcher.final_estimate == scheduler.estimate
    plain = make_searcher(d, "val_miou", "max", optuna.samplers.RandomSampler(seed=0), max_t=9,
                          search=SearchSection(), scheduler=make_scheduler(SchedulerSection(max_t=9, trust="raw"), d, 2))
    assert (plain.feedback, plain.diverged_feedback, plain.final_estimate) == ("pruned", "pruned", None)


def test_searcher_is_told_the_estimate_of_a_cut_trial():
    """A trial cut on a trusted prediction reaches Optuna as COMPLETE with the predicted final."""
    import optuna

    from hpo.tuning.searcher import HonestOptunaSearch

    estimates = {"a": 7.5}
    searcher = HonestOptunaSearch(_dist(), "score", "max", sampler=optuna.samplers.RandomSampler(seed=0), max_t=9,
                                  final_estimate=estimates.get)
    for tid in ("a", "b"):
        searcher.suggest(tid)
        searcher.on_trial_result(tid, {"training_iteration": 1, "score": 1.0})
        searcher.on_trial_complete(tid, {"training_iteration": 1, "score": 1.0})
    a, b = searcher.study.trials
    assert a.state == optuna.trial.TrialState.COMPLETE and a.value == 7.5 and a.user_attrs["estimated_final"]
    assert b.state == optuna.trial.TrialState.PRUNED          # cut without an estimate: pruned, as before


@pytest.mark.slow
def test_real_search_logs_its_rung_decisions(ray_local, tiny_data, tmp_path, monkeypatch):
    """A real Ray search with calibrated stopping: per-rung modes and correlations on the parent MLflow
    run match the scheduler's state file, cut trials carry their predicted final, and Optuna was told
    that prediction."""
    import optuna
    import yaml

    from helpers import trial_runs, write_space
    from hpo import search

    space = write_space(tmp_path, tiny_data, "calib", num_samples=8, max_concurrent=2, scheduler="asha", epochs=3)
    doc = yaml.safe_load(space.read_text())
    # trust any signal (rho_min -0.9) after 3 full curves with a thin margin, so this small search cuts
    doc["scheduler"].update(trust="calibrated", calibration={"cold_start": 3, "audit_share": 0.0, "rho_min": -0.9,
                                                             "tail": 0.05})
    doc["search"]["sampler"] = "random"
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.chdir(tmp_path)                 # MLflow artifacts stay in the test's folder
    assert search.main([str(space), "--no-report"]) == 0
    exp_dir = tmp_path / "ray_results" / "calib"
    state = json.loads((exp_dir / CALIBRATION_FILE).read_text())
    rung = state["rungs"]["1"]
    client, parent, children = trial_runs(f"sqlite:///{tmp_path}/mlflow.db", "calib")
    modes = client.get_metric_history(parent.info.run_id, "calib_mode_1")
    assert modes, sorted(parent.data.metrics)
    assert modes[-1].value == {"pass": 0, "raw": 1, "predicted": 2}[rung["mode"]]
    assert [m.step for m in modes] == sorted(m.step for m in modes)
    assert modes[-1].step == rung["cut"] + rung["kept"]
    assert parent.data.metrics["calib_cut_1"] == rung["cut"]
    if math.isfinite(rung["rho_raw"]):
        assert parent.data.metrics["calib_rho_raw_1"] == pytest.approx(rung["rho_raw"])
    cut = {r.data.tags["ray_trial_id"]: r for r in children if r.data.tags["status"] == "early_stopped"}
    assert len(cut) == rung["cut"] == len(state["estimates"]) >= 1, rung
    study = optuna.load_study(study_name="calib", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna_journal.log"))))
    told = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    for tid, run in cut.items():
        assert run.data.metrics["predicted_final_val_miou"] == pytest.approx(state["estimates"][tid])
        assert told[tid].state == optuna.trial.TrialState.COMPLETE
        assert told[tid].value == pytest.approx(state["estimates"][tid]) and told[tid].user_attrs["estimated_final"]
    # the first cold-start trials ran the full budget
    first = sorted(told.values(), key=lambda t: t.number)[:3]
    assert all(t.user_attrs["status"] == "completed" for t in first)


def test_tpe_beats_random_search_on_a_smooth_table(tmp_path):
    """The honest replay: TPE learns from the configs that were really evaluated, so on a table whose
    final score is a smooth known function of the knobs it beats random search at full budget."""
    from benchmarks.synthetic_table import make_table
    from hpo.simulation.curves import from_table
    from hpo.simulation.simulator import ReplaySettings, replay

    source = from_table(make_table(tmp_path / "smooth.npz", configs=256, epochs=4, dims=3, noise=0.2, seed=3))
    assert source.epochs.tolist() == [1, 2, 3, 4]

    def regrets(sampler):
        out = []
        for seed in range(8):
            res = replay(source, ReplaySettings(sampler=sampler, scheduler="none", seed=seed, max_concurrent=2,
                                                budget_epochs=24 * 4, num_samples=None))
            # the study recorded the configs it was scored on: every trial is a distinct table config
            assert len({t.config for t in res.trials}) == len(res.trials)
            out.append(res.regret_at(res.epochs))
        return np.array(out)

    tpe, rnd = regrets("tpe"), regrets("random")
    assert tpe.mean() < 0.5 * rnd.mean(), (tpe, rnd)
    assert (tpe <= rnd).sum() >= 6, (tpe, rnd)


def test_replay_runs_the_search_scheduler_and_never_cuts_on_backward_rungs(tmp_path):
    """On a table whose early validations rank configs backwards, the replay's scheduler (the object
    make_scheduler builds for a search) cuts there only on the prediction, never on the raw score,
    and ends closer to the best config than plain ASHA."""
    from benchmarks.synthetic_table import make_table
    from hpo.simulation.curves import from_table
    from hpo.simulation.simulator import ReplaySettings, replay

    source = from_table(make_table(tmp_path / "inv.npz", configs=128, epochs=9, dims=2, early_rank="inverted",
                                   noise=0.2, seed=1))
    early = [v for v in (1, 3) if np.mean([spearman(source.curves[:, k, v - 1], source.finals[:, k])
                                            for k in range(2)]) < 0]
    assert early == [1, 3]
    regrets = {"calibrated": [], "raw": []}
    for seed in range(3):
        for trust in regrets:
            res = replay(source, ReplaySettings(sampler="random", seed=seed, grace_period=1, reduction_factor=3,
                                                max_concurrent=2, trust=trust, budget_epochs=24 * 9))
            regrets[trust].append(res.regret_at(res.epochs))
            if trust == "calibrated":
                assert isinstance(res.scheduler, CalibratedASHA)
                assert all(res.scheduler.rungs[v].cut_raw == 0 for v in early if v in res.scheduler.rungs)
                assert sum(res.scheduler.rungs[v].cut for v in res.scheduler.rungs) > 0   # it did cut, on the prediction
    assert np.mean(regrets["calibrated"]) < np.mean(regrets["raw"]), regrets


def test_table_epochs_are_charged_and_the_cli_replays_the_demo_settings(tmp_path, capsys):
    """A table that validates at epochs 1, 2, 4, 8: each trial costs 8 epochs, not 4 validations; and
    `hpo.replay --table FILE` alone replays the demo space's sampler, scheduler and concurrency."""
    from benchmarks.synthetic_table import make_table
    from hpo import replay as cli
    from hpo.simulation.curves import from_table
    from hpo.simulation.simulator import ReplaySettings, replay

    path = make_table(tmp_path / "sparse.npz", configs=64, epochs=8, dims=2, validations=[1, 2, 4, 8])
    source = from_table(path)
    assert source.max_t == 4 and [source.cost(v) for v in (1, 2, 3, 4)] == [1, 1, 2, 4]
    res = replay(source, ReplaySettings(sampler="random", scheduler="none", max_concurrent=1, num_samples=3))
    assert res.epochs == 3 * 8 and all(t.epochs == 4 and t.status == "completed" for t in res.trials)
    assert res.regret_at(15) == res.regret_at(8) and res.trajectory[0][0] == 8

    assert cli.main(["--table", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tpe, ASHA (calibrated) grace 2 rf 3.0, 2 at a time, seed 0" in out     # search_spaces/demo.yaml
    assert "epochs" in out and "calibrated stopping at validation 2" in out
    assert cli.main(["--table", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: table not found" in capsys.readouterr().err


def test_a_table_without_the_schedule_axis_or_optional_arrays_replays(tmp_path):
    """The minimal table (docs/replay.md): meta, params and raw of shape (configs, seeds, validations)."""
    import json as _json

    from hpo.simulation.curves import from_table
    from hpo.simulation.simulator import ReplaySettings, replay

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 2))
    raw = (x.sum(1)[:, None, None] * np.linspace(0.2, 1, 5)[None, None, :]) + rng.normal(0, 0.01, (32, 2, 5))
    meta = {"space": {"a": {"type": "float", "low": 0, "high": 1}, "b": {"type": "float", "low": 0, "high": 1}}}
    np.savez(tmp_path / "min.npz", raw=raw, params=x, meta=np.array(_json.dumps(meta)))
    source = from_table(tmp_path / "min.npz")
    assert source.max_t == 5 and source.epochs.tolist() == [1, 2, 3, 4, 5] and source.diverged_at.shape == (32, 2)
    res = replay(source, ReplaySettings(sampler="random", scheduler="none", max_concurrent=1, num_samples=4))
    assert res.epochs == 20 and res.best_quality == pytest.approx(float(source.quality().max()))
