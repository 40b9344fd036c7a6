"""Promotion from a real finished toy search: real Ray, real Optuna, real MLflow sqlite + registry."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import TOY_PROMOTE_EPOCHS, TOY_SEARCH, wait_for
from hpo import promote
from hpo.training import run as training_run
from hpo.execution.promotion import CHAMPION, select_winners
from hpo.results.handle import find_search
from helpers import EPOCHS

pytestmark = pytest.mark.slow
NAME = TOY_SEARCH
PROMOTE_EPOCHS = TOY_PROMOTE_EPOCHS
K, S = 2, 2


@pytest.fixture(scope="module")
def finished_search(toy_search):
    """The session's shared toy search (conftest.py toy_search): deterministic, with a promote section."""
    s = toy_search
    ref = find_search(NAME, str(s.storage))
    yield SimpleNamespace(tmp=s.tmp, uri=s.uri, ref=ref, trials=ref.trials,
                          args=[NAME, "--storage-path", str(s.storage), "--out", str(s.tmp / "winners")])


def promoted_runs(s) -> list:
    client = MlflowClient(s.uri)
    return client.search_runs([s.ref.experiment_id], f"tags.`ctxtune.search_parent` = '{s.ref.parent_run_id}'")


@pytest.fixture(scope="module")
def promoted(finished_search):
    """The promotion Ctrl+C'd once mid-way (a subprocess), then the same command run again to the end."""
    import signal
    import subprocess
    import sys

    s = finished_search
    full = [t for t in s.trials if t.status == "completed" and t.last_step == EPOCHS]
    assert len(full) >= K, [(t.status, t.last_step) for t in s.trials]     # the toy search's shape
    assert any(t.status == "early_stopped" for t in s.trials)
    cmd = [sys.executable, "-m", "hpo.promote", *s.args, "--top-k", str(K), "--seeds", str(S)]
    log = s.tmp / "promote_first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=s.tmp, stdout=out, stderr=subprocess.STDOUT)
    client = MlflowClient(s.uri)

    def one_done_one_training():     # a finished training, and one with a checkpoint to resume from
        try:
            runs = promoted_runs(s)
            done = [r for r in runs if r.info.status == "FINISHED"]
            # still RUNNING after the Ctrl+C has been handled: caught with at least 2 epochs to go
            going = [r for r in runs if r.info.status == "RUNNING"
                     and 1 <= len(client.get_metric_history(r.info.run_id, "val_miou")) <= PROMOTE_EPOCHS - 2]
        except Exception:  # noqa: BLE001 - the promotion process is writing the SQLite store: look again
            return None
        return (done, going) if done and going else None
    done, going = wait_for(one_done_one_training, 300, "a finished and a training promoted run", proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) == 130, log.read_text()[-3000:]
    before = {r.info.run_id: r.info.status for r in promoted_runs(s)}
    cwd = os.getcwd()
    os.chdir(s.tmp)
    try:
        rc = promote.main([*s.args, "--top-k", str(K), "--seeds", str(S)])
    finally:
        os.chdir(cwd)
    assert rc == 0
    runs = promoted_runs(s)
    return SimpleNamespace(client=client, runs=runs, full=full, before=before,
                           done_at_kill={(r.data.tags["rank"], r.data.tags["seed"]) for r in runs
                                         if before.get(r.info.run_id) == "FINISHED"})


def test_top_k_times_seeds_full_budget_runs_with_tags(finished_search, promoted):
    client, runs = promoted.client, promoted.runs
    assert len(runs) == K * S
    assert sorted((r.data.tags["rank"], r.data.tags["seed"]) for r in runs) == [
        (str(k), str(s)) for k in range(1, K + 1) for s in range(S)]
    # winners: the best trials that ran the full budget, ranked by their score at that budget
    best_first = sorted(promoted.full, key=lambda t: -t.last_value)
    by_rank = {int(r.data.tags["rank"]): r.data.tags["ray_trial_id"] for r in runs}
    assert [by_rank[k] for k in range(1, K + 1)] == [t.trial_id for t in best_first[:K]]
    partial = {t.trial_id for t in finished_search.trials if t.status != "completed"}
    assert not partial & set(by_rank.values())
    for run in runs:
        assert run.info.status == "FINISHED"
        assert "mlflow.parentRunId" not in run.data.tags           # not nested under the search
        assert run.data.params["budget.epochs"] == str(PROMOTE_EPOCHS)
        assert run.data.params["seed"] == run.data.tags["seed"]
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_miou"))
        assert steps == list(range(1, PROMOTE_EPOCHS + 1))
        assert "final_val_miou" in run.data.metrics
        assert {"model", "confusion.png", "config.yaml", "overlays"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # the winners' configs on disk: trial config + the promote section
    for k in range(1, K + 1):
        cfg = yaml.safe_load((finished_search.tmp / "winners" / NAME / f"rank{k}.yaml").read_text())
        assert cfg["budget"]["epochs"] == PROMOTE_EPOCHS and cfg["eval"]["tta"] is True
        trial_run = next(r for r in runs if r.data.tags["rank"] == str(k)).data.tags["ctxtune.search_trial_run"]
        trial_params = client.get_run(trial_run).data.params
        assert str(cfg["model"]["selection"]["n3"]) == trial_params["model.selection.n3"]
        assert str(cfg["optim"]["lr"]) == trial_params["optim.lr"]


def test_champion_is_best_mean_winners_best_seed(finished_search, promoted, tmp_path):
    client, runs = promoted.client, promoted.runs
    scores: dict[int, dict[int, float]] = {}
    for r in runs:
        scores.setdefault(int(r.data.tags["rank"]), {})[int(r.data.tags["seed"])] = r.data.metrics["final_val_miou"]
    best_rank = max(scores, key=lambda k: sum(scores[k].values()) / len(scores[k]))
    best_seed = max(scores[best_rank], key=scores[best_rank].get)

    version = client.get_model_version_by_alias(NAME, CHAMPION)
    champion_run = client.get_run(version.run_id)
    assert (champion_run.data.tags["rank"], champion_run.data.tags["seed"]) == (str(best_rank), str(best_seed))
    registered = Path(client.download_artifacts(version.run_id, "model/config.yaml", str(tmp_path)))
    winner = yaml.safe_load((finished_search.tmp / "winners" / NAME / f"rank{best_rank}.yaml").read_text())
    assert yaml.safe_load(registered.read_text()) == dict(winner, seed=best_seed)
    assert version.source.endswith("/model")


def test_interrupted_promotion_resumes_into_the_same_runs(finished_search, promoted):
    """Ctrl+C mid-promotion, then the same command: trainings that finished are not re-run, the others
    continue (from their checkpoint) in the MLflow run they started, every epoch logged once."""
    client, runs = promoted.client, promoted.runs
    assert len(runs) == K * S
    assert set(promoted.before) <= {r.info.run_id for r in runs}        # no run of the first attempt replaced
    assert any(status == "RUNNING" for status in promoted.before.values())
    for run in runs:
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_miou"))
        assert steps == list(range(1, PROMOTE_EPOCHS + 1))            # nothing logged twice, no gap


def test_rerun_of_a_finished_promotion_skips_everything(finished_search, promoted, capsys):
    s = finished_search
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(s.tmp)
    try:
        assert promote.main([*s.args, "--top-k", str(K), "--seeds", str(S)]) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == K * S
    client = promoted.client
    assert len(promoted_runs(s)) == K * S                                   # no new MLflow runs
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1   # same champion, not re-registered
    # another promotion into the same folder is refused, not mixed in
    assert promote.main([*s.args, "--top-k", str(K), "--seeds", str(S + 1)]) == 2
    assert "holds a promotion of other winners, seeds or configs" in capsys.readouterr().err


def test_fewer_full_budget_trials_than_k_promotes_those_and_says_so(finished_search):
    trials = finished_search.trials
    winners, note = select_winners(trials, k=len(trials) + 5, max_t=EPOCHS)
    assert {w.trial_id for w in winners} == {t.trial_id for t in trials if t.status == "completed"}
    assert note.startswith(f"only {len(winners)} of {len(trials)} trials ran the full search budget")
    scores = [w.last_value for w in winners]
    assert scores == sorted(scores, reverse=True)


def test_hpo_train_reproduces_a_search_trial(finished_search, tmp_path):
    """The contract promotion relies on: a trial's logged config.yaml, re-trained at the trial's
    budget with hpo.train, gives the trial's final score."""
    s = finished_search
    trial = max((t for t in s.trials if t.status == "completed"), key=lambda t: t.last_value)
    client = MlflowClient(s.uri)
    cfg = yaml.safe_load(Path(client.download_artifacts(trial.run_id, "config.yaml", str(tmp_path))).read_text())
    summary = training_run.train(cfg, tmp_path / "again", log=lambda *_: None)
    assert summary["final"]["epochs"] == trial.last_step == EPOCHS
    assert summary["final"]["val_miou"] == pytest.approx(trial.last_value, abs=0.05)


@pytest.mark.parametrize("query", ["no-such-search", "0123456789abcdef0123456789abcdef", "ray_results/elsewhere"])
def test_unknown_search_is_one_line_exit_2(finished_search, query, capsys):
    s = finished_search
    rc = promote.main([query, "--storage-path", str(s.tmp / "ray_results"), "--tracking-uri", s.uri,
                       "--out", str(s.tmp / "winners")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"error: no search '{query}'")
    assert str(s.tmp / "ray_results") in err[0] and s.uri in err[0]


def test_search_found_by_parent_run_id_and_by_path(finished_search):
    s = finished_search
    by_id = find_search(s.ref.parent_run_id, tracking_uri=s.uri)
    by_path = find_search(str(s.tmp / "ray_results" / NAME))
    assert by_id.name == by_path.name == NAME
    assert by_id.parent_run_id == by_path.parent_run_id == s.ref.parent_run_id
