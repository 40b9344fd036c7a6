"""Stopping the whole search (target, budget, plateau) and the cost ledger: real Ray, Optuna, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_run_config
from helpers import child_runs
from hpo.results.handle import find_search
from hpo.execution.runner import run_search
from hpo.tuning.space import load_space
from hpo.trials import STOP_FILE
from hpo.tuning.stopping import SearchStopper

pytestmark = pytest.mark.slow
SAMPLES = 6
EPOCHS = 2


def write_space(tmp_path: Path, data_root: Path, name: str, stop: dict) -> Path:
    base = tiny_run_config(data_root)
    base["budget"] = {"epochs": EPOCHS, "iters_per_epoch": 1, "val_every": 1}
    base["eval"]["overlays"] = 0
    space = {"experiment": {"name": name, "storage_path": str(tmp_path / "ray_results"),
                            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
             "base": base,
             "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 0.05, "log": True}},
             "search": {"sampler": "random", "seed": 3, "num_samples": SAMPLES, "max_concurrent": 1},
             "scheduler": {"name": "none", "max_t": EPOCHS}, "resources": {"cpu": 1, "gpu": 0},
             "stop": stop}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def parent_of(tmp_path: Path, name: str):
    client, _exp, parent, _trials = child_runs(tmp_path, name)
    return client, parent


@pytest.mark.parametrize("rule, stop, expect", [
    ("target", {"target": 0.0}, "target: trial"),                       # any full-budget score reaches 0
    ("budget", {"budget": {"epochs": 2 * EPOCHS}}, "budget: 4 epochs trained"),
    ("plateau", {"plateau": {"trials": 2, "margin": 100.0}}, "plateau: the best full-budget"),
])
def test_each_stop_rule_ends_a_search_early_with_its_reason(ray_local, tiny_data, tmp_path, monkeypatch, capsys,
                                                            rule, stop, expect):
    monkeypatch.chdir(tmp_path)
    path = write_space(tmp_path, tiny_data, f"stop-{rule}", stop)
    assert run_search(load_space(path), space_path=str(path), report=False) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("search stopped after"))
    assert expect in line
    handle = find_search(f"stop-{rule}", str(tmp_path / "ray_results"))
    n = len(handle.trials)
    assert n < SAMPLES, line
    if rule == "target":      # the first trial to reach the full budget ends it
        assert sum(t.status == "completed" for t in handle.trials) == 1
    if rule == "plateau":     # a best, then 2 that did not beat it by the margin
        assert sum(t.status == "completed" for t in handle.trials) == 3
    client, parent = parent_of(tmp_path, f"stop-{rule}")
    assert parent.info.status == "FINISHED"
    assert expect in parent.data.tags["stop_reason"]
    assert expect in json.loads((handle.exp_dir / STOP_FILE).read_text())["reason"]
    if rule == "budget":
        # --resume still works: the rule is rebuilt from the trials' results and holds again at once
        assert run_search(load_space(path), space_path=str(path), resume=True, report=False) == 0
        assert "search stopped after" in capsys.readouterr().out
        assert len(find_search(f"stop-{rule}", str(tmp_path / "ray_results")).trials) == n


def test_cost_ledger_in_mlflow(ray_local, tiny_data, tmp_path, monkeypatch, capsys):
    """Every trial logs device-seconds per epoch and in total; the parent logs totals per rung segment,
    the early-stopped share and the multiple of one full training."""
    monkeypatch.chdir(tmp_path)
    path = write_space(tmp_path, tiny_data, "ledger", {})
    raw = yaml.safe_load(path.read_text())
    raw["scheduler"] = {"name": "asha", "max_t": EPOCHS, "grace_period": 1, "reduction_factor": 2, "trust": "raw"}
    raw["search"]["num_samples"] = 4
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run_search(load_space(path), space_path=str(path), report=False) == 0
    out = capsys.readouterr().out
    assert "cpu_s" in out and any(ln.startswith("cost: ") and "CPU-time over 4 trials" in ln for ln in out.splitlines())
    client, parent = parent_of(tmp_path, "ledger")
    trials = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    totals = {}
    for run in trials:
        per_epoch = client.get_metric_history(run.info.run_id, "device_seconds")
        assert [m.step for m in per_epoch] == list(range(1, int(run.data.tags["epochs_run"]) + 1))
        assert all(m.value > 0 for m in per_epoch)
        total = run.data.metrics["device_seconds_total"]
        assert total == pytest.approx(sum(m.value for m in per_epoch), rel=1e-6)
        assert run.data.tags["device_kind"] == "cpu"
        totals[run.data.tags["status"]] = totals.get(run.data.tags["status"], 0.0) + total
    m = parent.data.metrics
    assert m["cost_device_seconds"] == pytest.approx(sum(totals.values()), rel=1e-6)
    assert m["cost_device_seconds_epoch_1"] + m["cost_device_seconds_epoch_2"] == pytest.approx(
        m["cost_device_seconds"], rel=1e-6)
    assert m["cost_early_stopped_share"] == pytest.approx(totals.get("early_stopped", 0.0) / sum(totals.values()))
    full = [r.data.metrics["device_seconds_total"] for r in trials if r.data.tags["status"] == "completed"]
    assert m["cost_full_trainings"] == pytest.approx(m["cost_device_seconds"] / (sum(full) / len(full)), rel=1e-6)
    assert parent.data.tags["cost_device_kind"] == "cpu"
    board = Path(client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path))).read_text()
    assert "cpu_seconds" in board.splitlines()[0]


def _result(trial: str, step: int, value: float | None, seconds: float = 10.0) -> dict:
    r = {"trial_id": trial, "training_iteration": step, "device_seconds": seconds}
    if value is not None:
        r["val_miou"] = value
    return r


def test_target_and_plateau_count_only_full_budget_scores(tmp_path):
    """A score at an early rung is not comparable with a finished trial's: it never stops the search."""
    spec = load_space(Path(__file__).parents[1] / "search_spaces" / "demo.yaml",
                      {"stop": {"target": 20.0, "plateau": {"trials": 2}, "seed_spread": 0.5}})
    stopper = SearchStopper(spec.stop, "val_miou", "max", max_t=6, val_every=1, exp_dir=tmp_path)
    stopper("a", _result("a", 2, 25.0))                 # above the target, but at epoch 2 of 6
    assert not stopper.triggered()
    for step, v in [(1, 5.0), (6, 15.0)]:
        stopper("b", _result("b", step, v))
    stopper("c", _result("c", 6, 15.4))                    # improves by less than seed_spread (0.5)
    stopper("c", {**_result("c", 6, 15.4), "done": True})  # Tune's repeat of a finished trial's last result
    assert not stopper.triggered() and stopper.best == 15.0 and stopper.since_best == 1
    stopper("d", _result("d", 6, 15.2))
    assert stopper.triggered() and stopper.reason.startswith("plateau:") and "more than 0.5" in stopper.reason
    target = SearchStopper(spec.stop, "val_miou", "max", max_t=6, val_every=1, exp_dir=tmp_path / "t")
    target("e", _result("e", 6, 20.5))
    assert target.reason.startswith("target: trial e reached val_miou 20.5")
    budget = SearchStopper(load_space(Path(__file__).parents[1] / "search_spaces" / "demo.yaml",
                                      {"stop": {"budget": {"device_hours": 0.01}}}).stop,
                           "val_miou", "max", max_t=6, val_every=1, exp_dir=tmp_path / "b")
    for step in range(1, 4):
        budget("f", _result("f", step, 1.0, seconds=12.0))
    assert budget.triggered() and budget.reason.startswith("budget: 0.010 device-hours")   # 36 s >= 36 s
