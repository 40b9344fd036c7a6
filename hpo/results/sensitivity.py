"""Which knobs mattered: Optuna studies rebuilt from a search's trials, importance per stage.

Every analysis goes through Optuna studies rebuilt from the search's `TrialRecord`s
(hpo.results.handle) with `optuna.trial.create_trial`, using the distributions of its space file.

Choices made here (documented because nothing upstream fixes them):
- "Full budget" means the trial ran `scheduler.max_t` validations without failing. With
  `search.feedback: complete` early-stopped trials are COMPLETE in the journal; they are still
  classified by how far they ran, not by their Optuna state.
- Importance per ASHA rung uses every trial that reached the rung (failed ones included when they
  reported a real score there), scored by its value *at that rung*; rung milestones follow Ray's
  own formula, a milestone m is reached at validation ceil(m).
- PED-ANOVA's `target_quantile` defaults to min(0.5, max(0.1, 10/n)) for n trials: Optuna's
  default 0.1 puts a single trial above the quantile in a 10-trial search (its docs ask for at
  least five). On a synthetic 2-real/2-noise-knob set with 20 full-budget trials, 10/n ranked the
  real knobs first in 8 of 10 seeds, 5/n in 4. fANOVA is seeded (0) so a report is reproducible;
  note it measures log-scale knobs over their linear range (Optuna's transform_log=False).
- A stage with fewer than `min_trials` (default 5) scored trials, or where every trial scored the
  same, gets no importance; the reason is kept and shown instead.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from hpo.config import display_value
from hpo.results.handle import SearchHandle, TrialRecord
from hpo.tuning.space import SpaceFile, optuna_distributions, rung_milestones

EVALUATORS = ("PED-ANOVA", "fANOVA")


def display_distributions(spec: SpaceFile) -> dict[str, BaseDistribution]:
    out = {}
    for key, dist in optuna_distributions(spec).items():
        if isinstance(dist, CategoricalDistribution):
            dist = CategoricalDistribution([display_value(c) for c in dist.choices])
        out[key] = dist
    return out


def rung_correlations(search: SearchHandle) -> list[tuple[int, int, float, int]]:
    """(rung, next rung, Spearman rho, trials) over the trials' logged curves: the rung self-check."""
    from hpo.tuning.rung_check import RungCorrelation

    check = RungCorrelation(rung_milestones(search.spec) + [search.max_t], search.mode)
    for t in search.trials:
        for step, value in t.curve.items():
            check.add(t.trial_id, step, value)
    return check.table()


def stages(search: SearchHandle) -> list[tuple[str, int | None]]:
    """(label, rung step) per analysis stage; step None = full budget."""
    unit = "epoch" if search.spec.base["budget"].get("val_every", 1) == 1 else "validation"
    return [(f"rung {unit} {s}", s) for s in rung_milestones(search.spec)] + [("full budget", None)]


def _new_study(search: SearchHandle) -> optuna.Study:
    direction = "maximize" if search.mode == "max" else "minimize"
    return optuna.create_study(direction=direction, study_name=search.name)


def _add(study: optuna.Study, record: TrialRecord, dists: dict, value: float, search: SearchHandle,
         constraints: dict[str, float] | None = None) -> None:
    params = {k: display_value(v) for k, v in record.params.items() if k in dists}
    try:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=value,
            intermediate_values=record.curve, user_attrs={"ray_trial_id": record.trial_id},
            constraints=constraints))
    except ValueError as err:   # a value outside today's space file (the file was edited since)
        search.notes.append(f"trial {record.trial_id} left out of the analysis: {err}")


def stage_study(search: SearchHandle, step: int | None) -> optuna.Study:
    """COMPLETE trials scored at a rung (step) or at the full budget (step None)."""
    dists = display_distributions(search.spec)
    study = _new_study(search)
    for r in search.trials:
        if step is None:
            value = r.curve.get(search.max_t, r.last_value) if r.status == "completed" else None
        else:
            value = r.curve.get(step)
        if value is not None and math.isfinite(value):
            _add(study, r, dists, value, search)
    return study


def finished_study(search: SearchHandle) -> optuna.Study:
    """Every finished trial scored at its last validation; early-stopped ones carry a violated
    constraint, which Optuna's slice/parallel-coordinate plots draw distinctly (grey / dotted)."""
    dists = display_distributions(search.spec)
    study = _new_study(search)
    for r in search.trials:
        if r.status in ("completed", "early_stopped") and r.last_value is not None and math.isfinite(r.last_value):
            _add(study, r, dists, r.last_value, search,
                 constraints={"early_stopped": 1.0 if r.status == "early_stopped" else 0.0})
    return study


# --- importance --------------------------------------------------------------------------------

def ped_quantile(n: int) -> float:
    return min(0.5, max(0.1, 10.0 / max(n, 1)))


def make_evaluator(name: str, n: int, ped_target_quantile: float | None = None):
    if name == "PED-ANOVA":
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=ped_target_quantile or ped_quantile(n))
    if name == "fANOVA":
        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    raise ValueError(f"unknown evaluator {name}")


def importance(study: optuna.Study, evaluator: str, min_trials: int = 5,
               ped_target_quantile: float | None = None) -> tuple[dict[str, float] | None, str | None]:
    """Normalised importances (descending) or (None, reason)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = len(trials)
    if n < min_trials:
        return None, f"only {n} scored trial{'s' if n != 1 else ''} (need at least {min_trials}, --min-trials)"
    if len({t.value for t in trials}) == 1:
        return None, f"all {n} trials scored the same ({trials[0].value:g})"
    varied = [k for k, d in trials[0].distributions.items() if len({t.params.get(k) for t in trials}) > 1]
    if not varied:
        return None, "no knob took more than one value"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # Optuna's small-sample warnings; the report says n
        result = optuna.importance.get_param_importances(
            study, evaluator=make_evaluator(evaluator, n, ped_target_quantile))
    return dict(sorted(result.items(), key=lambda kv: -kv[1])), None


def importance_table(search: SearchHandle, min_trials: int = 5, ped_target_quantile: float | None = None
                     ) -> dict[str, dict[str, Any]]:
    """{stage label: {"n": trials, "step": step, evaluator: {knob: share} | None, "reason": str|None}}."""
    table: dict[str, dict[str, Any]] = {}
    for label, step in stages(search):
        study = stage_study(search, step)
        row: dict[str, Any] = {"n": len(study.trials), "step": step, "reason": None}
        for ev in EVALUATORS:
            row[ev], reason = importance(study, ev, min_trials, ped_target_quantile)
            row["reason"] = row["reason"] or reason
        table[label] = row
    return table
