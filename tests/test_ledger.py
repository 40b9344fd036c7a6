"""The cost ledger (hpo/results/ledger.py) on trials with known costs: every number computed by hand."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from hpo.results.ledger import Ledger, kind_of, ledger, log_to_run, unit_of
from hpo.results.handle import TrialRecord


def trial(number: int, status: str, cost: dict[int, float], kind: str | None = "cpu") -> TrialRecord:
    curve = {step: 10.0 + step for step in cost}
    return TrialRecord(number, f"t{number}", {}, curve, status, cost=cost, device_kind=kind)


# max_t 9, ASHA rungs 1 and 3: segments epoch 1, epochs 2-3, epochs 4-9
TRIALS = [
    trial(0, "completed", {1: 10.0, 2: 5.0, 3: 5.0, 4: 20.0, 9: 40.0}),     # 80 s
    trial(1, "completed", {1: 12.0, 3: 8.0, 9: 20.0}),                     # 40 s
    trial(2, "early_stopped", {1: 6.0}),                                   # 6 s
    trial(3, "early_stopped", {1: 7.0, 2: 3.0, 3: 4.0}),                   # 14 s
    trial(4, "failed", {1: 20.0}),                                         # 20 s
    trial(5, "unfinished", {}),                                            # no cost yet: not counted
]


def test_totals_shares_segments_and_full_trainings_by_hand():
    book = ledger(TRIALS, [1, 3, 9])
    assert book.trials == 5 and book.device_kind == "cpu" and book.unit == "CPU"
    assert book.total == pytest.approx(160.0)
    assert book.by_status == {"completed": 120.0, "early_stopped": 20.0, "failed": 20.0}
    assert book.share("early_stopped") == pytest.approx(20 / 160)
    assert book.share("failed") == pytest.approx(20 / 160)
    assert book.share("unfinished") == 0.0
    assert book.segments == [("epoch 1", 55.0), ("epochs 2-3", 25.0), ("epochs 4-9", 80.0)]
    assert sum(s for _, s in book.segments) == pytest.approx(book.total)
    assert book.full_training == pytest.approx((80 + 40) / 2)
    assert book.full_trainings == pytest.approx(160 / 60)
    assert book.metrics() == pytest.approx({
        "cost_device_seconds": 160.0, "cost_device_hours": 160 / 3600,
        "cost_early_stopped_share": 0.125, "cost_failed_share": 0.125, "cost_full_trainings": 160 / 60,
        "cost_device_seconds_epoch_1": 55.0, "cost_device_seconds_epochs_2_3": 25.0,
        "cost_device_seconds_epochs_4_9": 80.0})
    assert book.lines() == ["cost: 160 s CPU-time over 5 trials = 2.7x one full training; 12% on early-stopped "
                            "trials, 12% on failed ones; by rung segment: epoch 1 55 s, epochs 2-3 25 s, "
                            "epochs 4-9 80 s"]


def test_steps_past_the_last_milestone_get_their_own_segment_and_hours_over_an_hour():
    book = ledger([trial(0, "completed", {1: 3000.0, 2: 1000.0, 5: 3600.0}, "gpu")], [2])
    assert book.segments == [("epochs 1-2", 4000.0), ("after epoch 2", 3600.0)]
    assert book.unit == "GPU"
    assert book.lines()[0].startswith("cost: 2.11 h GPU-time over 1 trials = 1.0x one full training; 0% on")
    assert book.metrics("x_")["x_device_seconds_after_epoch_2"] == 3600.0
    # repeated milestones count once; a segment of one epoch is named by that epoch
    assert [label for label, _ in ledger(TRIALS, [3, 1, 3, 9]).segments] == ["epoch 1", "epochs 2-3", "epochs 4-9"]


def test_no_full_budget_trial_and_no_cost():
    book = ledger([trial(0, "early_stopped", {1: 4.0})], [1, 3])
    assert book.full_training is None and book.full_trainings is None
    assert "cost_full_trainings" not in book.metrics()
    assert book.lines() == ["cost: 4 s CPU-time over 1 trials; 100% on early-stopped trials, 0% on failed ones; "
                            "by rung segment: epoch 1 4 s, epochs 2-3 0 s"]
    empty = ledger([trial(0, "unfinished", {})], [1, 3])
    assert empty.trials == 0 and empty.total == 0 and empty.share("completed") == 0.0
    assert empty.lines() == ["cost: no trial reported its cost"]
    assert empty.device_kind == "unknown" and empty.unit == "device"


def test_device_kinds():
    assert kind_of(["gpu", None, "gpu"]) == "gpu"
    assert kind_of(["gpu", "cpu"]) == "mixed"
    assert kind_of([None]) == "unknown"
    assert (unit_of("gpu"), unit_of("cpu"), unit_of("mixed")) == ("GPU", "CPU", "device")
    assert ledger([trial(0, "completed", {1: 1.0}, "gpu"), trial(1, "completed", {1: 1.0}, "cpu")],
                  [1]).device_kind == "mixed"


def test_log_to_run_writes_the_metrics_and_the_kind(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("ledger")).info.run_id
    book = ledger(TRIALS, [1, 3, 9])
    log_to_run(client, run, book)
    logged = client.get_run(run).data
    assert logged.metrics == pytest.approx(book.metrics())
    assert logged.tags["cost_device_kind"] == "cpu"
    nan = Ledger("cpu", 0.0, [("epoch 1", math.nan)], {}, None, 0)     # a non-finite value is left out
    log_to_run(client, run, nan, prefix="n_")
    assert "n_device_seconds_epoch_1" not in client.get_run(run).data.metrics


@pytest.mark.parametrize("seconds, shown", [(3599.4, "3599 s"), (3600.0, "1.00 h"), (360000.0, "100.00 h"),
                                            (5.6, "6 s")])
def test_seconds_are_shown_in_hours_from_one_hour(seconds, shown):
    book = ledger([trial(0, "completed", {1: seconds})], [1])
    assert book.lines()[0].startswith(f"cost: {shown} CPU-time over 1 trials")


def test_a_ledger_without_segments_prints_none():
    book = Ledger("gpu", 7200.0, [], {"completed": 7200.0}, 3600.0, 2)
    assert book.lines() == ["cost: 2.00 h GPU-time over 2 trials = 2.0x one full training; 0% on early-stopped "
                            "trials, 0% on failed ones"]
