"""A Ray Tune searcher over Optuna's ask-and-tell API that tells Optuna the truth about trials.

Ray's own `OptunaSearch` tells Optuna that a trial ASHA stopped after one epoch was COMPLETE with
its 1-epoch score, so TPE mixes short- and full-budget scores as if they were comparable; changing
that meant editing its private members. `HonestOptunaSearch` is instead Ray's public `Searcher`
interface written over Optuna's public `ask` / `tell` / `Trial.report`:

- `suggest` asks the study for the space's distributions (points to evaluate are enqueued first);
- every validation is reported as an intermediate value (`Trial.report(value, step)`);
- a trial that ends without error before the full budget `max_t` is told PRUNED: Optuna keeps its
  intermediate values and records its last one as the value, which is how Optuna's own pruners
  leave trials. `feedback="complete"` tells it COMPLETE instead (Ray's behaviour, kept for the
  efficiency benchmark).
- a trial whose loss diverged (its last result says `status: diverged`, hpo.execution.trainable; `trial_status` in hpo.results.handle) is told
  as `diverged_feedback` says: "pruned" (default; its last finite scores: TPE never sees FAIL
  trials, so with "fail" it could not learn to avoid a diverging region), "worst" (COMPLETE with
  the worst score any trial reported so far) or "fail". It gets the user attr `diverged`.
- every finished trial carries the user attrs `ray_trial_id` and `status` (completed /
  early_stopped / failed), so a reader of the journal needs no rules of its own.
- a trial that calibrated early stopping (hpo.tuning.calibrated) cut on a trusted signal is told
  COMPLETE with the scheduler's estimate of its final score (`final_estimate`; user attr
  `estimated_final`): TPE then ranks full-budget scores, measured or predicted, and never learns to
  prefer a region because it looks good early. Cut without a trusted estimate: PRUNED, as above.
- `stop_rule` (hpo.tuning.stopping): once it has triggered, `suggest` answers FINISHED.
Note on TPE (Optuna 5, `_split_trials`): COMPLETE trials fill the "good" group first and PRUNED
trials only while fewer than gamma(n) trials completed, ranked by furthest step, then value.

State: Ray pickles the searcher with the experiment (`save` / `restore`). With a journal storage
the study itself lives in that file. On `--resume` after a SIGKILLed driver, the searcher comes
back from Ray's last snapshot while the journal holds everything asked since: a trial asked after
that snapshot is RUNNING in the journal but unknown to Ray, which will ask anew for its slot. Such
orphans are told FAIL and listed in the study's user attr `lost_trials`, so TPE's constant liar
does not count them as running forever and the study's finished trials match Ray's.
"""

from __future__ import annotations

import logging
import pickle

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from hpo.trials import DIVERGED, ITERATION, trial_status

logger = logging.getLogger(__name__)

class HonestOptunaSearch(Searcher):
    def __init__(self, space: dict[str, optuna.distributions.BaseDistribution], metric: str, mode: str, *,
                 sampler: optuna.samplers.BaseSampler, max_t: int, points_to_evaluate: list[dict] | None = None,
                 study_name: str | None = None, storage: optuna.storages.BaseStorage | None = None,
                 feedback: str = "pruned", diverged_feedback: str = "pruned", stop_rule=None,
                 final_estimate=None):
        super().__init__(metric=metric, mode=mode)
        self.stop_rule = stop_rule          # hpo.tuning.stopping: once it has triggered, no new trials
        # hpo.tuning.calibrated: trial id -> predicted final score of a trial it cut on a trusted signal
        self.final_estimate = final_estimate
        self.space = space
        self.max_t = max_t
        self.feedback = feedback
        self.diverged_feedback = diverged_feedback
        self.study = optuna.create_study(storage=storage, sampler=sampler, study_name=study_name,
                                         direction="maximize" if mode == "max" else "minimize",
                                         load_if_exists=True)
        for point in points_to_evaluate or []:
            self.study.enqueue_trial(point)
        self.trials: dict[str, optuna.Trial] = {}       # Ray trial id -> the Optuna trial it asked
        self.reported: dict[str, int] = {}              # Ray trial id -> last step told to Optuna
        self.finished: set[str] = set()

    # --- Ray's Searcher interface ---------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self.trials and self.stop_rule is not None and self.stop_rule.triggered():
            return Searcher.FINISHED
        if trial_id not in self.trials:
            trial = self.study.ask(fixed_distributions=self.space)
            trial.set_user_attr("ray_trial_id", trial_id)
            self.trials[trial_id] = trial
        return dict(self.trials[trial_id].params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.finished:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.finished or trial_id not in self.trials:
            return
        trial = self.trials[trial_id]
        # Tune hands a trial's last result to on_trial_complete, not on_trial_result: record it as an
        # intermediate value too, so a trial stopped at its first rung still has one.
        self._report(trial_id, result)
        self.finished.add(trial_id)
        status = trial_status(result, error, self.max_t)
        diverged = bool(result) and result.get("status") == DIVERGED and not error
        state, value = TrialState.FAIL, None
        estimate = self.final_estimate(trial_id) if status == "early_stopped" and self.final_estimate else None
        if estimate is not None:
            # cut on a trusted prediction: the sampler compares full-budget scores, measured or predicted
            state, value = TrialState.COMPLETE, estimate
            trial.set_user_attr("estimated_final", True)
        elif status == "completed" or (status == "early_stopped" and self.feedback == "complete"):
            state, value = TrialState.COMPLETE, result[self.metric]
        elif status == "early_stopped" or (diverged and self.diverged_feedback == "pruned"):
            state = TrialState.PRUNED
        elif diverged and self.diverged_feedback == "worst":
            value = self._worst_value()
            state = TrialState.COMPLETE if value is not None else TrialState.PRUNED   # nothing to call worst yet
        try:
            trial.set_user_attr("status", status)
            if diverged:
                trial.set_user_attr("diverged", True)
            self.study.tell(trial, value, state=state)
        except Exception as exc:   # noqa: BLE001 - a bookkeeping hiccup must not stop the search
            logger.warning("optuna tell failed for %s: %s", trial_id, exc)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:     # the stop rule is Tune's (RunConfig.stop), not ours to save
            pickle.dump({k: v for k, v in self.__dict__.items() if k not in ("stop_rule", "final_estimate")}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._close_lost_trials()

    # --- helpers --------------------------------------------------------------------------------
    def _report(self, trial_id: str, result: dict | None) -> None:
        """One intermediate value per validation; results without the metric (a divergence) carry none."""
        if not result or self.metric not in result:
            return
        step = int(result[ITERATION])
        if trial_id in self.trials and self.reported.get(trial_id) != step:
            self.trials[trial_id].report(float(result[self.metric]), step)
            self.reported[trial_id] = step

    def _close_lost_trials(self) -> None:
        known = {t.number for t in self.trials.values()}
        lost = [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number not in known]
        for number in lost:
            try:
                self.study.tell(number, state=TrialState.FAIL)
                logger.warning("optuna trial %d was lost with the driver: told FAIL", number)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop the resume
                logger.warning("could not close lost optuna trial %d: %s", number, exc)
        if lost:
            self.study.set_user_attr("lost_trials", sorted(set(self.study.user_attrs.get("lost_trials", []) + lost)))

    def _worst_value(self) -> float | None:
        """The worst score any trial reported so far (final or intermediate)."""
        seen = []
        for t in self.study.get_trials(deepcopy=False):
            seen.extend(t.intermediate_values.values())
            if t.state == TrialState.COMPLETE and t.value is not None:
                seen.append(t.value)
        seen = [v for v in seen if v == v]
        if not seen:
            return None
        return min(seen) if self.mode == "max" else max(seen)
