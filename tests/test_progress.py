"""The search's console progress line counts against the search's total."""

from __future__ import annotations

from types import SimpleNamespace


def test_progress_line_counts_against_the_total(capsys):
    from hpo.execution.console import progress_printer

    printer = progress_printer("val_miou", 6, total=15)
    trials = [SimpleNamespace(trial_id=f"t{i}", status=s)
              for i, s in enumerate(["TERMINATED", "TERMINATED", "ERROR", "RUNNING", "RUNNING", "PENDING"])]
    printer.on_trial_result(0, trials, trials[3], {"training_iteration": 2, "val_miou": 12.345, "train_loss": 0.5})
    line = capsys.readouterr().out.strip()
    assert line.endswith("trial t3 epoch 2/6 val_miou 12.35 loss 0.500 (3/15 done, 2 running)"), line
    # without a total (a caller that does not know it): the trials Tune has so far
    progress_printer("val_miou", 6).on_trial_result(0, trials, trials[4], {"training_iteration": 1,
                                                                           "status": "diverged"})
    assert capsys.readouterr().out.strip().endswith("trial t4 epoch 1/6 diverged (3/6 done, 2 running)")


def test_long_categorical_choices_get_short_slice_ticks():
    """Dilation grids as slice-plot ticks overlapped: long choices become #0, #1, ... spelled out below."""
    from hpo.results.report_page import choice_labels

    assert choice_labels(["paper3", "dense9"]) == (["paper3", "dense9"], "")
    labels, key = choice_labels(["paper3", [[1, 2, 3], [1, 2, 3, 4]]])
    assert labels == ["#0", "#1"]
    assert key.splitlines() == ["#0 = paper3", "#1 = [[1, 2, 3], [1, 2, 3, 4]]"]
