"""End-to-end searches on a real local Ray, real Optuna (journal storage) and a real MLflow sqlite store."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import wait_for
from helpers import EPOCHS, SEARCH_SAMPLES as NUM_SAMPLES, child_runs, write_search_space as write_space
from hpo import search

pytestmark = pytest.mark.slow


def test_demo_search_end_to_end(toy_search, tmp_path):
    """The shared toy search (conftest.py toy_search): what a user sees in MLflow and Optuna."""
    name = toy_search.name
    assert "leaderboard" in toy_search.out

    client, exp, parent, children = child_runs(toy_search.tmp, name)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"   # runs table, not GenAI view
    # one nested run per trial, each with params, metric histories, config and status
    assert len(children) == NUM_SAMPLES
    assert len({r.data.tags["ray_trial_id"] for r in children}) == NUM_SAMPLES
    statuses = [r.data.tags["status"] for r in children]
    assert set(statuses) <= {"completed", "early_stopped", "failed"}
    assert statuses.count("early_stopped") >= 1, statuses
    assert statuses.count("completed") >= 1, statuses
    for run in children:
        assert "model.selection.n3" in run.data.params and "optim.lr" in run.data.params
        hist = client.get_metric_history(run.info.run_id, "val_miou")
        steps = [m.step for m in hist]
        assert steps == list(range(1, int(run.data.tags["epochs_run"]) + 1))   # no gap, no duplicate
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(steps)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config.yaml" in artifacts and "overlays" in artifacts
        if run.data.tags["status"] == "completed":
            assert int(run.data.tags["epochs_run"]) == EPOCHS
            assert any(k.startswith("iou_") for k in run.data.metrics)
        else:
            assert int(run.data.tags["epochs_run"]) < EPOCHS
    # parent holds the space, base config, leaderboard and best config
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "base_config.yaml", "leaderboard.csv", "best_config.yaml"} <= parent_artifacts
    # the best trial, by the leaderboard's rule: of the trials that ran the full budget, the highest
    # val_miou at the full budget (not at their best epoch)
    best_of = {r.data.tags["ray_trial_id"]: max(client.get_metric_history(r.info.run_id, "val_miou"),
                                                key=lambda m: m.step).value
               for r in children if r.data.tags["status"] == "completed"}
    full_first = sorted(best_of, key=best_of.get, reverse=True)
    assert parent.data.tags["best_trial"] == full_first[0]
    assert parent.data.metrics["best_val_miou"] == pytest.approx(best_of[full_first[0]])
    board = Path(client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path))).read_text()
    rows = [line.split(",") for line in board.splitlines()[1:]]
    assert [r[0] for r in rows] == [str(i) for i in range(1, NUM_SAMPLES + 1)]
    assert [r[1] for r in rows[:len(full_first)]] == full_first            # full budget first, best first
    best_run = next(r for r in children if r.data.tags["ray_trial_id"] == full_first[0])
    best_cfg = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "best_config.yaml",
                                                             str(tmp_path))).read_text())
    assert str(best_cfg["model"]["selection"]["n3"]) == best_run.data.params["model.selection.n3"]
    assert str(best_cfg["optim"]["lr"]) == best_run.data.params["optim.lr"]

    # Optuna: the study persisted beside the Ray results; early-stopped trials are PRUNED
    exp_dir = toy_search.storage / name
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna_journal.log")))
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state for t in study.trials]
    assert len(states) == NUM_SAMPLES
    assert states.count(optuna.trial.TrialState.PRUNED) == statuses.count("early_stopped")
    assert states.count(optuna.trial.TrialState.COMPLETE) == statuses.count("completed")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.intermediate_values for t in pruned)
    # the paper's point was evaluated first
    assert study.trials[0].params["model.selection.n3"] == 11
    # the configured sampler proposed them (the searcher Ray checkpointed holds a TPE sampler)
    state_files = sorted(exp_dir.glob("searcher-state-*.pkl"))
    assert state_files
    with open(state_files[-1], "rb") as f:
        saved = pickle.load(f)
    assert isinstance(saved["study"].sampler, optuna.samplers.TPESampler)


def finished_trial_runs(db: Path) -> int:
    """Trial runs with a final status. Call only once the driver has created the store: two
    processes creating one SQLite store race (a known MLflow trap)."""
    client = MlflowClient(f"sqlite:///{db}")
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, "tags.status != 'running'", max_results=1000)
    return sum("ray_trial_id" in r.data.tags for r in runs)


def test_interrupted_search_resumes_without_loss_or_duplicates(ray_local, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import signal
    import subprocess
    import sys

    space = write_space(tmp_path, tiny_data, "resume")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hpo.search", str(space), "--no-report"], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    first_log = tmp_path / "first.log"
    # the driver created the MLflow store (two processes creating one SQLite store race)
    wait_for(lambda: "search 'resume'" in first_log.read_text(), 300, "search start", proc, first_log)
    wait_for(lambda: finished_trial_runs(tmp_path / "mlflow.db") >= 2, 300, "two finished trials", proc, first_log)
    proc.send_signal(signal.SIGINT)                               # Ctrl+C
    assert proc.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    before = finished_trial_runs(tmp_path / "mlflow.db")
    assert 2 <= before < NUM_SAMPLES

    assert search.main([str(space), "--resume", "--no-report"]) == 0
    client, _exp, parent, children = child_runs(tmp_path, "resume")
    assert parent.info.status == "FINISHED"
    trial_ids = [r.data.tags["ray_trial_id"] for r in children]
    assert len(trial_ids) == NUM_SAMPLES and len(set(trial_ids)) == NUM_SAMPLES    # each trial exactly once
    for run in children:
        assert run.data.tags["status"] in ("completed", "early_stopped")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
        assert steps == list(range(1, int(run.data.tags["epochs_run"]) + 1))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "ray_results" / "resume" / "optuna_journal.log")))
    study = optuna.load_study(study_name="resume", storage=storage)
    assert len(study.trials) >= NUM_SAMPLES
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == NUM_SAMPLES
