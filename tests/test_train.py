"""`python -m hpo.train`: a killed run resumes to the uninterrupted result in the same MLflow run;
bad input is one line; a broken tracking store never stops a training. Real MLflow sqlite stores."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import tiny_run_config
from hpo import train as hpo_train
from hpo.config import load_run_config
from hpo.tracking.train_tracker import RUN_FILE
from hpo.training import run as training_run

EPOCHS = 5


def write_config(tmp_path: Path, data_root: Path, **overrides) -> Path:
    cfg = tiny_run_config(data_root, **{"budget.epochs": EPOCHS, "runtime.checkpoint_every": 1,
                                        "runtime.deterministic": True, **overrides})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def kill_after_first_checkpoint(cmd: list[str], cwd: Path, deadline_s: float = 240.0) -> list[str]:
    """Run `cmd`, SIGKILL it as soon as it reports its first checkpoint; returns the lines read."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            if not sel.select(timeout=end - time.monotonic()):
                continue
            line = proc.stdout.readline()
            if not line:           # the process ended before its first checkpoint
                break
            lines.append(line.rstrip())
            if "checkpoint saved" in line:
                proc.kill()
                break
        else:
            proc.kill()
            pytest.fail(f"no checkpoint within {deadline_s} s: {lines[-5:]}")
    finally:
        proc.wait()
        sel.close()
        proc.stdout.close()
    assert proc.returncode == -9, f"expected a SIGKILLed process, got rc {proc.returncode}: {lines[-5:]}"
    return lines


def test_killed_training_resumes_into_the_same_run_and_matches_an_uninterrupted_one(tiny_data, tmp_path,
                                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)          # MLflow puts artifacts in ./mlruns
    config = write_config(tmp_path, tiny_data)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    kill_after_first_checkpoint([sys.executable, "-m", "hpo.train", str(config), "--out", str(killed),
                                 "--tracking-uri", uri, "--experiment", "resume-test"], cwd=tmp_path)
    state = torch.load(killed / training_run.CHECKPOINT, weights_only=True)
    assert 1 <= state["epoch"] < EPOCHS
    assert not (killed / training_run.DONE).exists()
    run_id = json.loads((killed / RUN_FILE).read_text())["run_id"]

    assert hpo_train.main([str(config), "--out", str(killed), "--resume", "--tracking-uri", uri,
                           "--experiment", "resume-test", "--register", "tiny-model"]) == 0
    assert f"resumed from {killed / training_run.CHECKPOINT} at epoch {state['epoch']}" in capsys.readouterr().out
    assert hpo_train.main([str(config), "--out", str(clean), "--tracking-uri", uri,
                           "--experiment", "resume-test"]) == 0

    resumed = json.loads((killed / training_run.METRICS).read_text())
    straight = json.loads((clean / training_run.METRICS).read_text())
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, EPOCHS + 1))
    for a, b in zip(resumed["history"], straight["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_miou"] == pytest.approx(b["val_miou"], abs=0.01)
    assert resumed["final"]["val_miou"] == pytest.approx(straight["final"]["val_miou"], abs=0.01)

    # the resumed run is the killed one, complete: one point per epoch, final metrics, pictures, weights
    client = MlflowClient(uri)
    assert json.loads((killed / RUN_FILE).read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_miou")) == list(range(1, EPOCHS + 1))
    assert run.data.metrics["final_val_miou"] == pytest.approx(resumed["final"]["val_miou"])
    assert any(k.startswith("iou_") for k in run.data.metrics)
    assert run.data.params["budget.epochs"] == str(EPOCHS)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "confusion.png", "metrics.json", "model", "overlays"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {"model/config.yaml", "model/weights.pt"}
    exp = client.get_experiment_by_name("resume-test")
    assert len(client.search_runs([exp.experiment_id])) == 2          # killed+resumed, uninterrupted

    # --register: a registry version pointing at the run's weights + config
    versions = client.search_model_versions("name = 'tiny-model'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run_id)]
    assert versions[0].source.endswith("/model")
    weights = torch.load(killed / "model" / "weights.pt", weights_only=True)
    assert any(k.endswith("weight") for k in weights)


def test_tta_final_evaluation_and_outputs(tiny_data, tmp_path, monkeypatch):
    """eval.tta: curves stay single-scale, the final evaluation is multi-scale + flip."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tiny_data, **{"budget.epochs": 2, "eval.tta": True,
                                                  "eval.scales": [0.75, 1.0, 1.25]})
    summary = training_run.train(load_run_config(config), tmp_path / "out", log=lambda *_: None)
    assert summary["final"]["tta"] is True and summary["final"]["epochs"] == 2
    assert summary["final"]["val_miou"] != summary["history"][-1]["val_miou"]   # a different evaluation
    assert len(summary["confusion"]) == len(summary["class_names"]) == 19
    out = tmp_path / "out"
    assert (out / "confusion.png").stat().st_size > 1000
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert json.loads((out / training_run.DONE).read_text())["final"] == summary["final"]


def test_bad_input_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tiny_data)
    raw = yaml.safe_load(config.read_text())
    raw["budget"]["epochz"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert hpo_train.main([str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: budget.epochz: unknown key"

    assert hpo_train.main([str(config), "--out", str(tmp_path / "never"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint at" in err[0] and "never" in err[0]
    assert not (tmp_path / "mlflow.db").exists()        # nothing was tracked for a run that never started


def test_broken_tracking_store_warns_once_and_trains(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tiny_data, **{"budget.epochs": 2})
    (tmp_path / "blocker").write_text("a file where the store's folder would go")
    broken = f"sqlite:///{tmp_path}/blocker/mlflow.db"
    assert hpo_train.main([str(config), "--out", str(tmp_path / "out"), "--tracking-uri", broken,
                           "--register", "nope"]) == 0
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning: MLflow")]
    assert len(warnings) == 1, captured.err
    assert (tmp_path / "out" / training_run.DONE).is_file()
    assert "final val mIoU" in captured.out



def test_exit_codes_seed_override_and_rerun_of_a_finished_run(tiny_data, tmp_path, monkeypatch, capsys):
    """0 for a run (and for --resume of one that finished: nothing retrained), --seed overrides the
    config's seed, 1 with one line for a diverged training (its MLflow run FAILED with the reason)."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tiny_data, **{"budget.epochs": 1})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "out"
    assert hpo_train.main([str(config), "--out", str(out), "--seed", "7", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.params["seed"] == "7"
    done = (out / training_run.DONE).read_text()
    capsys.readouterr()
    assert hpo_train.main([str(config), "--out", str(out), "--resume", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: this run already finished (remove {out / training_run.DONE} " \
                                               "to evaluate again)"
    assert (out / training_run.DONE).read_text() == done                      # not evaluated again
    assert len(client.search_runs([run.info.experiment_id])) == 1          # no second run

    (tmp_path / "d").mkdir()
    diverging = write_config(tmp_path / "d", tiny_data, **{"budget.epochs": 2, "optim.lr": 1e12})
    assert hpo_train.main([str(diverging), "--out", str(tmp_path / "nan"), "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training diverged: ") and "Traceback" not in err[0]
    failed = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert failed[0].data.tags["error"].startswith("DivergenceError: ")
    assert not (tmp_path / "nan" / training_run.DONE).exists()


def test_epochs_flag_shortens_a_run_without_editing_the_yaml(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tiny_data, **{"budget.epochs": 5})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert hpo_train.main([str(config), "--out", str(tmp_path / "short"), "--epochs", "1", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.params["budget.epochs"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")] == [1]
    assert hpo_train.main([str(config), "--out", str(tmp_path / "zero"), "--epochs", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --epochs: expected a whole number >= 1, got 0"
