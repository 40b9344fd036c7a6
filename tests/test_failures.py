"""A search whose trials all fail: it stops after `failure.stop_after` identical errors, says so in one
line per trial and once at the end, and exits non-zero."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import trial_runs, write_space

pytestmark = pytest.mark.slow


def test_identical_failures_stop_the_search(ray_local, tiny_data, tmp_path, monkeypatch, capfd, caplog):
    from hpo import search
    from hpo.trials import STOP_FILE

    space = write_space(tmp_path, tiny_data, "allfail", num_samples=6, max_concurrent=1, epochs=2)
    doc = yaml.safe_load(space.read_text())
    doc["base"]["model"]["num_classes"] = 5          # the data has 19: every trial's loss indexes out of range
    doc["failure"] = {"max_retries": 0, "stop_after": 3}
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    # The pre-flight (datasets.check_sample) refuses this config before Ray starts (test_preflight.py);
    # skip it here to get what it is there for: a mistake that fails every trial alike at run time.
    import datasets

    monkeypatch.setattr(datasets, "check_sample", lambda cfg: "data: not checked (test)")

    assert search.main([str(space), "--no-report"]) == 1
    out = capfd.readouterr()
    console = out.out + out.err
    reason = json.loads((tmp_path / "ray_results" / "allfail" / STOP_FILE).read_text())["reason"]
    assert reason.startswith("failures: 3 trials in a row failed with the same error (failure.stop_after 3): ")
    assert "out of bounds" in reason
    assert "error: all 3 trials failed (failures: 3 trials in a row" in console
    failed = [r for r in caplog.records if r.getMessage().startswith("Trial task failed for trial")]
    assert len(failed) == 3                              # one line per failed trial, not Ray's trace
    assert all(r.exc_info is None and "IndexError: Target" in r.getMessage() for r in failed)
    assert "Traceback" not in console + caplog.text
    _, parent, children = trial_runs(f"sqlite:///{tmp_path}/mlflow.db", "allfail")
    assert len(children) == 3                           # the other 3 of num_samples never started
    assert all(r.data.tags["status"] == "failed" and "out of bounds" in r.data.tags["error"] for r in children)
    assert parent.data.tags["stop_reason"] == reason


def test_failure_rule_needs_the_same_error_in_a_row(tmp_path):
    from hpo.tuning.space import StopSection
    from hpo.tuning.stopping import SearchStopper

    stopper = SearchStopper(StopSection(), "val_miou", "max", 3, 1, tmp_path, stop_after_failures=3)
    for tid, err in [("a", "E1"), ("b", "E1"), ("c", None), ("d", "E1"), ("e", "E2"), ("f", "E1"), ("g", "E1")]:
        stopper.trial_ended(tid, err)
        assert not stopper.triggered(), tid          # a success resets, a different error breaks the run
    stopper.trial_ended("h", "E1")
    assert stopper.triggered() and stopper.reason.endswith("(failure.stop_after 3): E1")
    never = SearchStopper(StopSection(), "val_miou", "max", 3, 1, tmp_path / "x", stop_after_failures=0)
    for tid in "abcdef":
        never.trial_ended(tid, "E1")
    assert not never.triggered()


def test_ray_lines_that_compete_with_ctxtunes_own_are_dropped(caplog):
    """After prepare_environment: Ray's own resume hint and per-run token notice are not shown (ctxtune
    prints `python -m hpo.search ... --resume`); a failed trial's record is one line."""
    import logging

    from hpo.execution.console import prepare_environment

    prepare_environment()
    prepare_environment()                      # twice: one filter each, not two
    assert len(logging.getLogger("ray.tune.tune").filters) == 1
    with caplog.at_level(logging.INFO):
        logging.getLogger("ray.tune.tune").warning("Experiment has been interrupted, but ... Tuner.restore(...)")
        logging.getLogger("ray._private.authentication.authentication_token_setup").warning(
            "Token authentication is enabled for this Ray cluster.")
        logging.getLogger("ray.tune.tune").warning("Trials did not complete: [a]")
        try:
            raise IndexError("Target 13 is out of bounds.")
        except IndexError as exc:
            logging.getLogger("ray.tune.execution.tune_controller").error("Trial task failed for trial t1",
                                                                          exc_info=exc)
    assert [r.getMessage() for r in caplog.records] == [
        "Trials did not complete: [a]", "Trial task failed for trial t1: Target 13 is out of bounds."]
    assert "Traceback" not in caplog.text
