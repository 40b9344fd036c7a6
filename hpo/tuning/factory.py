"""The searcher and the scheduler of a search, built in one place for the real search
(hpo.execution.runner's Tuner) and the replay (hpo.simulation.simulator), so "the replay runs the
code a real search runs" holds by construction.

Room `hpo.tuning`: what decides (space, samplers, priors, searcher, schedulers, stop rules); shared
by the real search and the replay; never imports MLflow, and nothing that starts or drives Ray.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from hpo.tuning.calibrated import CalibratedASHA
from hpo.tuning.calibration import unit_encoder
from hpo.tuning.searcher import HonestOptunaSearch


def make_scheduler(sched, distributions: dict[str, Any], max_concurrent: int, state_path: str | None = None):
    """The Tune scheduler a space file's `scheduler` section (hpo.tuning.space.SchedulerSection) asks for; the
    real search and the replay both build theirs here. Metric and mode come as Tune gives them to any
    scheduler: `set_search_properties` (the Tuner's metric; the replay calls it the same way)."""
    if sched.name == "none":
        return FIFOScheduler()
    if sched.trust == "raw":
        return ASHAScheduler(time_attr=sched.time_attr, max_t=sched.max_t, grace_period=sched.grace_period,
                             reduction_factor=sched.reduction_factor, brackets=sched.brackets)
    c = sched.calibration
    return CalibratedASHA(max_t=sched.max_t, grace_period=sched.grace_period,
                          reduction_factor=sched.reduction_factor, encode=unit_encoder(distributions),
                          cold_start=c.cold_start, max_concurrent=max_concurrent, audit_share=c.audit_share,
                          rho_min=c.rho_min, confidence=c.confidence, tail=c.tail, time_attr=sched.time_attr,
                          state_path=state_path)


def make_searcher(distributions: dict[str, Any], metric: str, mode: str, sampler, *, max_t: int, search,
                  points: list[dict] | None = None, scheduler=None, study_name: str | None = None,
                  storage=None, stop_rule=None) -> HonestOptunaSearch:
    """The searcher a space file's `search` section (hpo.tuning.space.SearchSection) asks for, over
    `sampler`; told the final score `scheduler` predicts for the trials it cuts (calibrated trust)."""
    return HonestOptunaSearch(distributions, metric, mode, sampler=sampler, max_t=max_t,
                              points_to_evaluate=points or [], study_name=study_name, storage=storage,
                              feedback=search.feedback, diverged_feedback=search.diverged_feedback,
                              stop_rule=stop_rule, final_estimate=getattr(scheduler, "estimate", None))
