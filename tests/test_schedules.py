"""Budget-aware LR schedules and annealed evaluation (hpo/training/schedules.py, Trainer.annealed_validate)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_run_config


def _optim(**kw) -> dict:
    from hpo.config import OptimSection

    return OptimSection(**kw).model_dump()


def test_poly_is_the_papers_schedule():
    from hpo.training.schedules import lr_factor

    f = lr_factor(_optim(), steps_per_epoch=10, total_steps=100)
    assert f(0) == 1.0 and f(100) == 0.0
    assert f(50) == pytest.approx(0.5 ** 0.9)


def test_wsd_is_constant_then_decays_linearly_to_zero():
    from hpo.training.schedules import lr_factor

    f = lr_factor(_optim(schedule="wsd", decay_fraction=0.2), steps_per_epoch=10, total_steps=100)
    assert [f(s) for s in (0, 40, 79)] == [1.0, 1.0, 1.0]
    assert f(80) == 1.0 and f(90) == pytest.approx(0.5) and f(99) == pytest.approx(0.05)
    warm = lr_factor(_optim(schedule="wsd", warmup_epochs=1), steps_per_epoch=10, total_steps=100)
    assert warm(0) == pytest.approx(0.1) and warm(9) == 1.0


def test_rung_poly_reaches_zero_at_every_rung_and_restarts_on_the_envelope():
    from hpo.training.schedules import lr_factor

    f = lr_factor(_optim(schedule="rung_poly", rungs=[1, 3]), steps_per_epoch=10, total_steps=90)
    assert f(0) == 1.0
    assert f(9) < 0.15 and f(29) < 0.1 and f(89) < 0.05          # annealed at epochs 1, 3 and 9
    envelope = lr_factor(_optim(), steps_per_epoch=10, total_steps=90)
    assert f(10) == pytest.approx(envelope(10)) and f(30) == pytest.approx(envelope(30))


def test_asha_rungs_match_rays_bracket():
    from ray.tune.schedulers.async_hyperband import _Bracket

    from hpo.training.schedules import asha_rungs

    for grace, rf, max_t in [(1, 3, 9), (1, 2, 9), (2, 3, 6), (3, 3, 9), (1, 4, 16)]:
        ray_rungs = sorted(m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs if m < max_t)
        assert asha_rungs(grace, rf, max_t) == ray_rungs


def test_bad_rungs_are_one_line_errors():
    from hpo.config import normalize
    from models.config import ConfigError

    with pytest.raises(ConfigError, match=r"^optim.rungs: .*increasing"):
        normalize({"model": {"name": "fcn"}, "optim": {"schedule": "rung_poly", "rungs": [3, 1]}})
    with pytest.raises(ConfigError, match=r"^optim.schedule"):
        normalize({"model": {"name": "fcn"}, "optim": {"schedule": "cosine-ish"}})


def test_annealed_evaluation_scores_a_fork_and_leaves_the_run_untouched(tiny_data):
    """A run with cool-down forks after epochs 1 and 2 ends bit-identical to one without them,
    and reports the fork's score as val_miou beside the plain one."""
    from hpo.training.trainer import Trainer

    torch.set_num_threads(1)
    plain = Trainer(tiny_run_config(tiny_data, **{"optim.schedule": "wsd"}), log=lambda *_: None)
    seen_plain = []
    plain.fit(lambda t, m, v: seen_plain.append(m))
    forked = Trainer(tiny_run_config(tiny_data, **{"optim.schedule": "wsd", "eval.anneal_steps": 2}),
                     log=lambda *_: None)
    seen = []
    forked.fit(lambda t, m, v: seen.append(m))

    for a, b in zip(plain.model.state_dict().values(), forked.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [m["val_miou"] for m in seen_plain[:2]] == [m["val_miou_raw"] for m in seen[:2]]
    assert all("anneal_seconds" in m for m in seen[:2])
    assert "val_miou_raw" not in seen[-1]                # the final validation is never forked
    assert seen[-1]["val_miou"] == seen_plain[-1]["val_miou"]


def test_the_fork_really_trains_and_is_then_undone(tiny_data):
    from hpo.training.trainer import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(tiny_run_config(tiny_data, **{"optim.schedule": "wsd"}), log=lambda *_: None)
    trainer.train_epoch()
    before = trainer.validate(keep=0).confusion
    fork = trainer.annealed_validate(3, keep=0).confusion
    after = trainer.validate(keep=0).confusion
    assert (before == after).all()
    assert not (before == fork).all()           # three more SGD steps changed the predictions
    assert trainer.step == trainer.steps_per_epoch and trainer.epoch == 1


def test_schedule_values_by_hand_at_the_edges():
    from hpo.training.schedules import lr_factor

    one = lr_factor(_optim(), steps_per_epoch=1, total_steps=1)               # a one-step budget
    assert one(0) == 1.0 and one(1) == 0.0
    wsd = lr_factor(_optim(schedule="wsd", decay_fraction=0.1), steps_per_epoch=1, total_steps=10)
    assert [wsd(s) for s in (8, 9, 10)] == [1.0, 1.0, 0.0]                      # decays over one step
    # rung_poly: within a segment [start, end) the envelope's value at start, poly-decayed to 0 at end
    f = lr_factor(_optim(schedule="rung_poly", rungs=[1, 3]), steps_per_epoch=10, total_steps=90)
    env = lambda s: (1 - s / 90) ** 0.9  # noqa: E731
    assert f(5) == pytest.approx((1 - 5 / 10) ** 0.9)
    assert f(20) == pytest.approx(env(10) * (1 - 10 / 20) ** 0.9)
    assert f(60) == pytest.approx(env(30) * (1 - 30 / 60) ** 0.9)
    assert f(90) == 0.0 and f(95) == 0.0                                        # past the budget
    # rungs are epochs: with 2 steps an epoch, rung 3 is step 6, beyond an 8-step budget's rung at 1
    g = lr_factor(_optim(schedule="rung_poly", rungs=[1, 5]), steps_per_epoch=2, total_steps=8)
    assert g(1) == pytest.approx((1 - 1 / 2) ** 0.9)                            # segment [0, 2)
    assert g(5) == pytest.approx((1 - 2 / 8) ** 0.9 * (1 - 3 / 6) ** 0.9)        # rung 5 (step 10) ignored
    h = lr_factor(_optim(schedule="rung_poly", rungs=[1]), steps_per_epoch=1, total_steps=4)
    assert h(0) == 1.0 and h(1) == pytest.approx((1 - 1 / 4) ** 0.9)            # a rung at step 1 restarts


def test_unknown_schedule_is_named():
    from hpo.training.schedules import lr_factor

    with pytest.raises(ValueError) as err:
        lr_factor({"poly_power": 0.9, "schedule": "cosine"}, 1, 10)
    assert str(err.value) == "optim.schedule: unknown schedule 'cosine'"
