"""Each `search.sampler` drives the searcher a real search builds (HonestOptunaSearch) through a
small search, Ray-free: ask, report, tell. (tpe and random run in the end-to-end tests.)"""

from __future__ import annotations

import optuna
import pytest

from hpo.config import encode_choice
from hpo.tuning.space import SpaceFile, encoded_points, make_sampler, optuna_distributions

GRID = [[6, 12, 18], [6, 12, 18]]


def spec(search: dict) -> SpaceFile:
    return SpaceFile.model_validate({
        "experiment": {"name": "samplers"}, "base": {"budget": {"epochs": 2, "val_every": 1}},
        "space": {"n3": {"type": "int", "low": 2, "high": 16, "default": 11},
                  "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
                  "alpha": {"type": "float", "low": 0.1, "high": 1.5, "step": 0.1, "default": 0.7},
                  "grid": {"type": "categorical", "choices": [GRID, "paper9"], "default": GRID}},
        "search": search, "scheduler": {"max_t": 2}})


@pytest.mark.parametrize("name", ["cmaes", "gp", "nsga2"])
def test_each_sampler_drives_the_searcher_through_a_small_search(name):
    """The searcher a real search builds (HonestOptunaSearch) asking and telling with each sampler:
    the defaults first, then the sampler's own proposals within bounds, every trial told."""
    from hpo.tuning.searcher import HonestOptunaSearch

    s = spec({"sampler": name, "seed": 1, "num_samples": 8})
    searcher = HonestOptunaSearch(optuna_distributions(s), "val_miou", "max", sampler=make_sampler(s), max_t=2,
                                  points_to_evaluate=encoded_points(s))
    seen = []
    for i in range(8):
        params = searcher.suggest(f"t{i}")
        seen.append(params)
        score = 10 * params["alpha"] + params["n3"]
        searcher.on_trial_result(f"t{i}", {"val_miou": score / 2, "training_iteration": 1})
        searcher.on_trial_complete(f"t{i}", {"val_miou": score, "training_iteration": 2})
    assert seen[0] == {**encoded_points(s)[0], "lr": seen[0]["lr"]}        # the paper's point first
    for p in seen:
        assert 2 <= p["n3"] <= 16 and 1e-4 <= p["lr"] <= 0.1 and 0.1 - 1e-9 <= p["alpha"] <= 1.5 + 1e-9
        assert p["grid"] in (encode_choice(GRID), "paper9")
    trials = searcher.study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 8
    assert len({tuple(sorted(p.items())) for p in seen}) == 8               # eight different configs
    assert trials[3].value == 10 * seen[3]["alpha"] + seen[3]["n3"]
