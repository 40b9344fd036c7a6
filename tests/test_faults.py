"""Faults during a real search: a trial's worker SIGKILLed, the driver SIGKILLed, the MLflow
tracking server down for ~30 s, a diverging trial. Real processes, real Ray/Optuna/MLflow.

What each test asserts is what a user relies on afterwards: every trial is one MLflow run with
its full metric history (no gap, no duplicate), the Optuna study agrees, nothing is left running.
The numbers (recovery time, delayed calls) are printed (`pytest -s`), never asserted.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import optuna
import pytest

from conftest import wait_for
from helpers import (MlflowServer, assert_complete_history, search_cmd, search_env, spawn, stop, trial_runs,
                     write_space)

pytestmark = pytest.mark.slow
OUTAGE_S = 5      # the tracking server stays down at least this long, and until an epoch was trained meanwhile


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def spawn_search(tmp_path: Path, space: Path, name: str, log: Path, *extra: str):
    """`python -m hpo.search` in its own process group, returned once it has created the MLflow
    store: reading the store from here no longer races its creation."""
    driver = spawn(search_cmd(space, *extra), log, env=search_env(), cwd=tmp_path)
    try:
        wait_for(lambda: f"search '{name}':" in log.read_text(), 300, "search start", driver, log)
    except BaseException:
        stop(driver)
        raise
    return driver


def load_study(tmp_path: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "ray_results" / name / "optuna_journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def live_in_group(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies awaiting their reaper do not count)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":      # fields: state, ppid, pgrp, ...
            pids.append(int(stat.parent.name))
    return pids


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "(exited)"


def test_killed_trial_restarts_from_checkpoint_and_diverged_trial_fails(tiny_data, tmp_path):
    """SIGKILL a trial's worker mid-epoch: it resumes from its last checkpoint and stays one run
    with a complete history. In the same search, lr 1e12 diverges: failed at once, with the reason."""
    epochs = 4
    # All three trials are given: a sampled third one may diverge too (the sampler learns from the
    # first one's feedback), and then the only healthy trial can finish before the test catches it.
    points = [{"model.selection.n3": 4, "optim.lr": 1e12}, {"model.selection.n3": 4, "optim.lr": 0.02},
              {"model.selection.n3": 8, "optim.lr": 0.01}]
    space = write_space(tmp_path, tiny_data, "killtrial", sqlite_uri(tmp_path), num_samples=3, epochs=epochs,
                        iters_per_epoch=12, points=points, max_retries=1, lr_high=1e12)
    log = tmp_path / "search.log"
    driver = spawn_search(tmp_path, space, "killtrial", log)
    try:
        def a_training_trial():
            client, _, runs = trial_runs(sqlite_uri(tmp_path), "killtrial")
            for run in runs:
                steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
                if run.data.tags.get("ray_pid") and run.info.status == "RUNNING" and 1 <= len(steps) < epochs - 1:
                    return run, len(steps)
        run, steps_before = wait_for(a_training_trial, 300, "a trial past its first checkpoint", driver, log)
        pid = int(run.data.tags["ray_pid"])
        assert "ray::" in Path(f"/proc/{pid}/cmdline").read_text()     # a Ray worker, not the driver
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        stop(driver)

    client, parent, runs = trial_runs(sqlite_uri(tmp_path), "killtrial")
    assert parent.info.status == "FINISHED"
    assert len(runs) == 3 and len({r.data.tags["ray_trial_id"] for r in runs}) == 3
    killed = next(r for r in runs if r.info.run_id == run.info.run_id)
    # restarted in a new worker, from its checkpoint, to the full budget: one history 1..epochs
    assert killed.data.tags["status"] == "completed" and killed.info.status == "FINISHED"
    assert int(killed.data.tags["ray_pid"]) != pid
    assert_complete_history(client, killed, epochs)
    from ray.tune import ExperimentAnalysis

    trials = {t.trial_id: t for t in ExperimentAnalysis(str(tmp_path / "ray_results" / "killtrial")).trials}
    assert trials[killed.data.tags["ray_trial_id"]].num_failures == 1
    after = [m for m in client.get_metric_history(killed.info.run_id, "val_miou") if m.step > steps_before]
    print(f"\nkilled trial: SIGKILL after {steps_before} epoch(s); next epoch logged "
          f"{after[0].timestamp / 1000 - killed_at:.1f} s after the kill (restart + the lost partial epoch)")

    # the diverged trial: failed at once (one step at most), the reason on the run, PRUNED in Optuna
    # (search.diverged_feedback's default, so TPE learns to avoid the region; FAIL it would ignore)
    diverged = [r for r in runs if float(r.data.params["optim.lr"]) > 1e6 and r.data.tags["status"] == "failed"]
    assert diverged, [(r.data.params["optim.lr"], r.data.tags["status"]) for r in runs]
    for r in diverged:
        assert r.info.status == "FAILED"
        assert "loss became" in r.data.tags["error"] and ("nan" in r.data.tags["error"]
                                                         or "inf" in r.data.tags["error"])
        assert int(r.data.tags["epochs_run"]) <= 1
        assert client.get_metric_history(r.info.run_id, "val_miou") == []   # its placeholder is not a score
    study = load_study(tmp_path, "killtrial")
    by_lr = {t.params["optim.lr"]: t.state for t in study.trials}
    assert by_lr[1e12] == optuna.trial.TrialState.PRUNED
    assert next(t for t in study.trials if t.params["optim.lr"] == 1e12).user_attrs["diverged"] is True
    assert by_lr[0.02] == optuna.trial.TrialState.COMPLETE
    assert all(t.state.is_finished() for t in study.trials)


def test_killed_driver_resumes_without_loss_or_duplicates(tiny_data, tmp_path):
    """SIGKILL `hpo.search` mid-search (no final state save, no cleanup); `--resume` completes it."""
    n = 4
    space = write_space(tmp_path, tiny_data, "killdriver", sqlite_uri(tmp_path), num_samples=n)
    log = tmp_path / "first.log"
    driver = spawn_search(tmp_path, space, "killdriver", log)
    try:
        def finished_runs():
            _, _, runs = trial_runs(sqlite_uri(tmp_path), "killdriver")
            return sum(r.info.status != "RUNNING" for r in runs) >= 1
        wait_for(finished_runs, 300, "a finished trial", driver, log)
        os.kill(driver.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        driver.wait(timeout=60)
        # The local Ray of a SIGKILLed driver: its GCS and raylet die with it, but its worker processes
        # (idle workers, the trial actors) can linger and keep training. Give them a moment, then
        # kill what is left, as a user would (docs/cluster.md): a zombie trial would race the resumed one.
        wait_for(lambda: not live_in_group(driver.pid), 15, "the killed driver's processes to exit", fail=False)
        lingered = [command_of(pid) for pid in live_in_group(driver.pid)]
    finally:
        stop(driver)
        for pid in live_in_group(driver.pid):      # whatever is left of its process group
            os.kill(pid, signal.SIGKILL)
    _, parent, runs_before = trial_runs(sqlite_uri(tmp_path), "killdriver")
    assert parent.info.status == "RUNNING"          # nobody closed it: the driver was killed
    assert len(runs_before) < n or any(r.info.status == "RUNNING" for r in runs_before)

    log2 = tmp_path / "resume.log"
    resumed = spawn(search_cmd(space, "--resume"), log2, env=search_env(), cwd=tmp_path)
    try:
        assert resumed.wait(timeout=600) == 0, log2.read_text()[-3000:]
    finally:
        stop(resumed)
    recovery = time.monotonic() - killed_at

    client, parent, runs = trial_runs(sqlite_uri(tmp_path), "killdriver")
    assert parent.info.status == "FINISHED"
    ids = [r.data.tags["ray_trial_id"] for r in runs]
    assert len(ids) == n and len(set(ids)) == n, ids                 # none lost, none duplicated
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed", run.data.tags.get("error")
        assert_complete_history(client, run, 3)
    study = load_study(tmp_path, "killdriver")
    assert not [t for t in study.trials if not t.state.is_finished()]      # nothing left RUNNING
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["ray_trial_id"] for t in complete) == sorted(ids)
    lost = [t for t in study.trials if t.number in study.user_attrs.get("lost_trials", [])]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in lost)
    # the count: every Optuna trial is one of the n that ran, or one lost with the driver (told FAIL, said once)
    assert len(lost) == len(study.user_attrs.get("lost_trials", []))
    assert len(study.trials) == n + len(lost)
    assert sorted(t.number for t in study.trials if t.state == optuna.trial.TrialState.FAIL) == \
        sorted(t.number for t in lost)
    assert log2.read_text().count("was lost with the driver: told FAIL") == len(lost)
    print(f"\nkilled driver: {len(runs_before)} run(s) at the kill; resumed to {n} trials in {recovery:.0f} s "
          f"after the kill; Optuna trials lost with the driver (told FAIL): {len(lost)}; "
          f"local Ray lingered after the kill: {lingered}")


def test_tracking_server_outage_delays_but_loses_nothing(tiny_data, tmp_path):
    """The MLflow server goes away mid-search (OUTAGE_S, plus the time it takes to start again) and
    comes back on the same port and stores: trials keep training meanwhile, and afterwards every
    metric is there. Trials that finish while it is down leave the driver retrying its queue at the
    end of the search (hpo/tracking/trial_logger.py drains for up to 120 s); the server is back well before that."""
    server = MlflowServer(tmp_path).start()
    epochs, n = 4, 4
    space = write_space(tmp_path, tiny_data, "outage", server.uri, num_samples=n, epochs=epochs, iters_per_epoch=8)
    log = tmp_path / "search.log"
    driver = spawn(search_cmd(space), log, env=search_env(), cwd=tmp_path)
    try:
        def first_result():
            client, _, runs = trial_runs(server.uri, "outage")
            return any(client.get_metric_history(r.info.run_id, "val_miou") for r in runs)
        wait_for(first_result, 300, "a first logged result", driver, log)
        lines_at_stop = log.read_text().count(" epoch ")
        server.stop(signal.SIGKILL)       # an outage is abrupt: no graceful shutdown
        down_at = time.monotonic()
        # Down long enough to see the search go on without it.
        wait_for(lambda: time.monotonic() - down_at >= OUTAGE_S and log.read_text().count(" epoch ") > lines_at_stop,
                 300, "training progress while the tracking server is down", driver, log)
        trained_while_down = log.read_text().count(" epoch ") - lines_at_stop
        server.start()
        down_for = time.monotonic() - down_at
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        stop(driver)
    try:
        client, parent, runs = trial_runs(server.uri, "outage")
        assert parent.info.status == "FINISHED"
        assert len(runs) == n and len({r.data.tags["ray_trial_id"] for r in runs}) == n
        for run in runs:
            assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
            assert_complete_history(client, run, epochs)
            assert any(k.startswith("iou_") for k in run.data.metrics)
            assert {"config.yaml", "overlays"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        server.stop()
    out = log.read_text()
    summary = next(line for line in out.splitlines() if line.startswith("MLflow was unreachable"))
    assert "all calls written" in summary
    delayed_s = float(summary.split("for ")[1].split(" s")[0])
    assert not math.isnan(delayed_s) and delayed_s > 0
    print(f"\ntracking outage: server down {down_for:.0f} s, {trained_while_down} epoch results while down; "
          f"driver: {summary}")
