"""Space encoding without building models (fast): distributions, what is evaluated first, the
rung milestones, the samplers each `search.sampler` names. test_space_validation covers whole files."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

from hpo.config import encode_choice
from hpo.tuning.priors import PriorMixSampler
from hpo.tuning.space import (FloatDist, IntDist, SpaceFile, base_sampler, encoded_points, make_sampler, max_reports,
                       optuna_distributions, rung_milestones)

GRID = [[6, 12, 18], [6, 12, 18]]


def spec(space: dict | None = None, search: dict | None = None, scheduler: dict | None = None) -> SpaceFile:
    return SpaceFile.model_validate({
        "experiment": {"name": "enc"}, "base": {"budget": {"epochs": 9, "val_every": 1}},
        "space": space or {"n3": {"type": "int", "low": 2, "high": 16, "default": 11},
                           "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
                           "alpha": {"type": "float", "low": 0.1, "high": 1.5, "step": 0.1, "default": 0.7},
                           "grid": {"type": "categorical", "choices": [GRID, "paper9"], "default": GRID}},
        "search": search or {}, "scheduler": scheduler or {"max_t": 9}})


def test_optuna_distributions_keep_bounds_scale_step_and_encode_list_choices():
    d = optuna_distributions(spec())
    assert d["n3"] == optuna.distributions.IntDistribution(2, 16, log=False, step=1)
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)
    assert d["alpha"] == optuna.distributions.FloatDistribution(0.1, 1.5, step=0.1)
    assert d["grid"] == optuna.distributions.CategoricalDistribution([encode_choice(GRID), "paper9"])
    assert list(d) == ["n3", "lr", "alpha", "grid"]


def test_defaults_are_one_point_evaluated_first_then_the_given_points():
    s = spec(search={"points_to_evaluate": [{"n3": 4, "lr": 0.01}, {"n3": 11, "alpha": 0.7, "grid": GRID}]})
    # the defaults first; a given point equal to them is not evaluated twice
    assert encoded_points(s) == [{"n3": 11, "alpha": 0.7, "grid": encode_choice(GRID)}, {"n3": 4, "lr": 0.01}]
    none = spec(space={"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}},
                search={"points_to_evaluate": [{"lr": 0.01}]})
    assert encoded_points(none) == [{"lr": 0.01}]
    assert s.search.points_to_evaluate[1]["grid"] == GRID                  # the spec itself is left as it was


@pytest.mark.parametrize("scheduler, expected", [
    ({"max_t": 9, "grace_period": 1, "reduction_factor": 3}, [1, 3]),
    ({"max_t": 9, "grace_period": 1, "reduction_factor": 2}, [1, 2, 4, 8]),
    ({"max_t": 9, "grace_period": 2, "reduction_factor": 2.5}, [2, 5]),       # 2, 2 x 2.5 (12.5 > 9)
    ({"max_t": 9, "grace_period": 1, "reduction_factor": 1.5}, [1, 2, 3, 4, 6, 8]),   # 1, 1.5, 2.25, 3.4, 5.1, 7.6: ceil
    ({"max_t": 9, "grace_period": 9, "reduction_factor": 3}, []),            # no rung below the full budget
    ({"name": "none", "max_t": 9}, []),
])
def test_rung_milestones(scheduler, expected):
    assert rung_milestones(spec(scheduler=scheduler)) == expected


def test_max_reports_counts_validations():
    assert max_reports({"budget": {"epochs": 9, "val_every": 1}}) == 9
    assert max_reports({"budget": {"epochs": 9, "val_every": 3}}) == 3
    assert max_reports({"budget": {"epochs": 10, "val_every": 3}}) == 4      # the last epoch validates too


@pytest.mark.parametrize("dist, message", [
    ({"type": "int", "low": 8, "high": 2}, "low (8) must be <= high (2)"),
    ({"type": "int", "low": 0, "high": 8, "log": True}, "log scale needs low >= 1 and step 1"),
    ({"type": "int", "low": 1, "high": 8, "log": True, "step": 2}, "log scale needs low >= 1 and step 1"),
    ({"type": "float", "low": 0.5, "high": 0.1}, "low (0.5) must be <= high (0.1)"),
    ({"type": "float", "low": 0.0, "high": 0.1, "log": True}, "log scale needs low > 0"),
    ({"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}, "log and step cannot be combined"),
])
def test_bad_distributions_say_what_is_wrong(dist, message):
    cls = IntDist if dist["type"] == "int" else FloatDist
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls.model_validate(dist)
    ok = dict(dist, low=1, high=8, log=False) if dist["type"] == "int" else dict(dist, low=0.1, high=1.0, log=False)
    assert cls.model_validate(ok).low == ok["low"]
    assert IntDist.model_validate({"type": "int", "low": 3, "high": 3}).high == 3
    assert FloatDist.model_validate({"type": "float", "low": 1e-3, "high": 1e-3, "log": True}).low == 1e-3


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                       ("cmaes", optuna.samplers.CmaEsSampler), ("gp", optuna.samplers.GPSampler),
                                       ("nsga2", optuna.samplers.NSGAIISampler)])
def test_each_sampler_name_builds_that_sampler_seeded(name, cls):
    s = spec(search={"sampler": name, "seed": 3, "num_samples": 30})
    assert isinstance(base_sampler(s.search), cls)
    mixed = make_sampler(s)               # knobs with defaults: mixed with prior draws around them
    assert isinstance(mixed, PriorMixSampler) and isinstance(mixed.base, cls)
    assert mixed.defaults == {"n3": 11, "alpha": 0.7, "grid": encode_choice(GRID)}
    assert (mixed.share, mixed.width, mixed.seed, mixed.decay) == (0.5, 0.15, 3, 10)
    off = spec(search={"sampler": name, "prior": {"share": 0}})
    assert isinstance(make_sampler(off), cls)




def test_int_knobs_keep_log_scale_and_step():
    s = spec(space={"n5": {"type": "int", "low": 4, "high": 64, "log": True},
                    "batch": {"type": "int", "low": 2, "high": 16, "step": 2}})
    d = optuna_distributions(s)
    assert d["n5"] == optuna.distributions.IntDistribution(4, 64, log=True)
    assert d["batch"] == optuna.distributions.IntDistribution(2, 16, step=2)


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "gp", "nsga2"])
def test_each_sampler_is_seeded_by_search_seed(name):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)}
    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=base_sampler(spec(search={"sampler": name, "seed": 5}).search))
        draws.append([study.ask(space).params["lr"] for _ in range(3)])
    assert draws[0] == draws[1]
