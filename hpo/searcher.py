"""OptunaSearch that tells Optuna the truth about ASHA-stopped and diverged trials.

Out of the box, Ray's `OptunaSearch` tells Optuna that a trial ASHA stopped early was COMPLETE
with its early score, so TPE mixes 1-epoch and full-budget scores as if they were comparable.
Here a trial that ends (without error) before the full budget `max_t` is told as PRUNED: Optuna
keeps its intermediate values (one per validation, reported as they arrive) and records its last
one as the value, which is how Optuna's own pruners leave trials. `feedback="complete"` restores
Ray's behaviour (kept for the efficiency benchmark).

A trial whose loss diverged is told as `diverged_feedback` says:
- "pruned" (default): PRUNED with the intermediate values it reported before diverging. TPE never
  sees FAIL trials, so with "fail" it could not learn to avoid a diverging region (a too-high LR);
  a PRUNED trial is ranked by how far it got and its last finite score, and one that diverged in
  its first epoch has no value and ranks last.
- "worst": COMPLETE with the worst score any trial of the study has reported so far (user attr
  `diverged`), so TPE always counts it among the bad trials, however many trials completed.
- "fail": FAIL, as before (TPE ignores it).
Note on TPE (Optuna 5, `_split_trials`): COMPLETE trials fill the "good" group first and PRUNED
trials only while fewer than gamma(n) trials completed, ranked by furthest step, then value.

On `--resume` after a driver that was SIGKILLed, the searcher comes back from Ray's last snapshot
while the Optuna journal holds everything asked since: a trial asked after that snapshot is
RUNNING in the journal but unknown to Ray, which will ask anew for its slot. Such orphans are
told FAIL (user attr `lost`) so TPE's constant liar does not count them as running forever and
the study's finished trials match Ray's.
"""

from __future__ import annotations

import logging

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


def trial_status(last_result: dict | None, errored: bool, max_t: int) -> str:
    """The honest status shared by MLflow tags, the leaderboard and the searcher."""
    if errored or not last_result or last_result.get("diverged"):
        return "failed"
    if last_result.get("training_iteration", 0) < max_t:
        return "early_stopped"
    return "completed"


class HonestOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_t: int, feedback: str = "pruned", diverged_feedback: str = "pruned", **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._feedback = feedback
        self._diverged_feedback = diverged_feedback
        self._reported_step: dict[str, int] = {}   # last step told to Optuna per trial

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known:
                try:
                    self._ot_study._storage.set_trial_user_attr(
                        t._trial_id, "lost", "asked after Ray's last experiment snapshot; the driver died")
                    self._ot_study.tell(t.number, state=TrialState.FAIL)
                    logger.warning("optuna trial %d was lost with the driver: told FAIL", t.number)
                except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop the resume
                    logger.warning("could not close lost optuna trial %d: %s", t.number, exc)

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict):
        if result.get("diverged"):
            return      # the reported metric is a placeholder, not a score
        super().on_trial_result(trial_id, result)
        self._reported_step[trial_id] = result.get("training_iteration")

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        status = trial_status(result, error, self._max_t)
        if (result and status != "failed" and self.metric in result
                and self._reported_step.get(trial_id) != result.get("training_iteration")):
            # Tune hands a trial's last result to on_trial_complete, not on_trial_result: record it
            # as an intermediate value too, so a trial stopped at its first rung still has one.
            try:
                self._ot_trials[trial_id].report(result[self.metric], result["training_iteration"])
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop the search
                logger.debug("report skipped: %s", exc)
        if status == "completed" or (status == "early_stopped" and self._feedback == "complete"):
            return super().on_trial_complete(trial_id, result, error)
        diverged = status == "failed" and not error and bool(result and result.get("diverged"))
        state, value = TrialState.PRUNED if status == "early_stopped" else TrialState.FAIL, None
        if diverged and self._diverged_feedback == "pruned":
            state = TrialState.PRUNED
        elif diverged and self._diverged_feedback == "worst":
            state, value = TrialState.COMPLETE, self._worst_value()
            if value is None:
                state = TrialState.PRUNED        # nothing reported yet to call worst
        try:
            if diverged:
                self._ot_trials[trial_id].set_user_attr("diverged", True)
            self._ot_study.tell(self._ot_trials[trial_id], state=state, values=value)
        except Exception as exc:   # noqa: BLE001 - a bookkeeping hiccup must not stop the search
            logger.warning("optuna tell failed for %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _worst_value(self) -> float | None:
        """The worst score any trial reported so far (final or intermediate)."""
        seen = []
        for t in self._ot_study.get_trials(deepcopy=False):
            seen.extend(t.intermediate_values.values())
            if t.state == TrialState.COMPLETE and t.value is not None:
                seen.append(t.value)
        seen = [v for v in seen if v == v]
        if not seen:
            return None
        return min(seen) if self._mode == "max" else max(seen)
