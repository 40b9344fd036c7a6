"""A search replayed in simulated time through the real searcher and scheduler objects.

A replay is a search whose trials do not train: each suggestion is a config with known learning
curves (hpo.simulation.curves: a curve table, or the trials of a finished search) and its results
arrive from that curve at simulated times. Everything else is the code a real `hpo.search` runs:
the searcher and the scheduler come from the same factory as the real Tuner's
(hpo.tuning.factory: `HonestOptunaSearch` over the sampler the space asks for, calibrated early
stopping or Ray's `ASHAScheduler`), behind Ray's `ConcurrencyLimiter`, called in the order Ray's
TuneController calls them (Syne Tune's simulator backend follows the same design):

- a free slot asks the searcher (`suggest`) and adds the trial to the scheduler (`on_trial_add`);
- each result goes to `scheduler.on_trial_result`; unless that says STOP it goes on to
  `searcher.on_trial_result`; the trial's last result (its budget, a STOP, or a diverged loss)
  ends it with `scheduler.on_trial_complete` then `searcher.on_trial_complete`;
- events are taken from a heap of simulated finish times (ties in creation order); a stopped trial
  drops its future events; the replay ends at `num_samples` trials or an epoch budget, each
  validation costing the epochs since the previous one (a table's `epochs` list).

Result times: per-epoch seconds of the tabulated run; for a search source, each result's own
`time_this_iter_s` from Ray's per-trial result.json when the Ray results are on this machine (the
first one includes the trial's start-up), else 1 time unit per epoch. With one trial at a time the
order, and so every ASHA decision, does not depend on durations; with more it can.

Choices, documented because the real search cannot tell us:
- Snapping (`SnapToTable`): the sampler proposes, the proposal is snapped to the nearest known config
  in the unit cube of the space and the Optuna trial records *that* config's params, so the sampler
  learns from the configs that were evaluated. Tables: the nearest config not replayed yet (drawn
  without replacement); a finished search: the nearest (its own suggestions replay exactly).
- Training noise: each trial draws one of the tabulated training seeds (the replay's RNG).
- A trial that needs an epoch its source never measured (a search's early-stopped trial promoted
  further in the replay) ends there and counts as `censored`; the summary says how many.
- Regret: quality of the returned config = its mean final score over the tabulated seeds; the
  returned config is the completed trial with the best *observed* final score, as the leaderboard
  picks it. Regret = best mean final score in the source minus that.

Room `hpo.simulation`: imports the tuning room and Ray Tune's scheduler/searcher interfaces, never
the execution room (nothing here starts Ray or trains) or MLflow.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from optuna.samplers import BaseSampler

from hpo.simulation.curves import CurveSource, ReplayError
from hpo.trials import DIVERGED, ITERATION

TABLE_BUDGET = 32          # full trainings a table replay may spend by default


@dataclass
class ReplaySettings:
    sampler: str = "tpe"
    seed: int = 0
    scheduler: str = "asha"              # asha | none
    trust: str = "calibrated"            # calibrated (hpo.tuning.calibrated) | raw (Ray's plain ASHA)
    calibration: dict = field(default_factory=dict)   # scheduler.calibration settings
    grace_period: int = 1
    reduction_factor: float = 3
    brackets: int = 1                    # trust raw: ASHA brackets (Hyperband-style; 1 = plain ASHA)
    max_t: int | None = None             # default: the source's full budget
    max_concurrent: int = 2
    num_samples: int | None = None       # default: what `budget_epochs` buys at ASHA's expected cost
    budget_epochs: int | None = None
    feedback: str = "pruned"
    diverged_feedback: str = "pruned"     # as search.diverged_feedback
    points_to_evaluate: list[dict] = field(default_factory=list)
    defaults: dict = field(default_factory=dict)   # knob -> default (hpo.tuning.priors): evaluated first, a prior
    prior_share: float = 0.2
    prior_width: float = 0.15
    prior_decay: float | None = None
    snap: str | None = None              # unused: nearest config not replayed yet | nearest; default by source:
                                         # unused for tables, nearest for a finished search's own trials

    @classmethod
    def from_space(cls, spec, **over) -> "ReplaySettings":
        """The search and scheduler settings of a space file (hpo.tuning.space.SpaceFile)."""
        from hpo.config import encode_choice
        from hpo.tuning.space import encoded_points

        sc, se = spec.scheduler, spec.search
        return cls(**{**dict(
            sampler=se.sampler, seed=se.seed, scheduler=sc.name, trust=sc.trust,
            calibration=sc.calibration.model_dump(), grace_period=sc.grace_period,
            reduction_factor=sc.reduction_factor, brackets=sc.brackets, max_t=sc.max_t,
            max_concurrent=se.max_concurrent, num_samples=se.num_samples, feedback=se.feedback,
            diverged_feedback=se.diverged_feedback, points_to_evaluate=encoded_points(spec),
            defaults={k: encode_choice(d.default) for k, d in spec.space.items() if d.default is not None},
            prior_share=se.prior.share, prior_width=se.prior.width, prior_decay=se.prior.decay), **over})


@dataclass
class ReplayTrial:
    trial_id: str
    config: int                # index in the source
    seed: int                  # column in the source
    epochs: int = 0            # validations delivered
    status: str = "running"    # completed | early_stopped | failed | censored (running: cut by the budget)
    last: float | None = None


@dataclass
class ReplayResult:
    trials: list[ReplayTrial]
    events: list[tuple[float, str, int, float, str]]   # (time, trial, step, value, decision)
    trajectory: list[tuple[int, float, float]]         # (epochs used, observed best, its true quality)
    epochs: int
    best_quality: float                                 # best mean final score in the source
    scheduler: Any = None                               # the scheduler object, after the replay

    def regret_at(self, epochs: int) -> float:
        """Regret of the config the search would return after `epochs` epochs (inf: none yet)."""
        got = [q for e, _, q in self.trajectory if e <= epochs]
        return self.best_quality - got[-1] if got else math.inf

    def epochs_to(self, quality: float) -> int | None:
        """Epochs until the returned config's true quality reached `quality` (None: never)."""
        return next((e for e, _, q in self.trajectory if q >= quality), None)


def expected_epochs_per_trial(max_t: int, grace: int, rf: float) -> float:
    """Validations one trial costs on average under ASHA: a share 1/rf^k passes rung k."""
    from hpo.training.schedules import asha_rungs

    total, prev = 0.0, 0
    for k, rung in enumerate(asha_rungs(grace, rf, max_t) + [max_t]):
        total += (rung - prev) / rf ** k
        prev = rung
    return total


class SnapToTable(BaseSampler):
    """Replay only: an Optuna sampler that lets `base` propose a config, snaps the proposal to a
    tabulated config and returns that config's params, so the study records the config whose scores
    it is told (not the neighbour it asked for). `exclude_used`: the nearest config not replayed yet
    (configs drawn without replacement, as a table benchmark's random search does), until all were."""

    def __init__(self, base: BaseSampler, source: CurveSource, exclude_used: bool = True):
        self.base, self.source, self.exclude_used = base, source, exclude_used
        self.used: set[int] = set()

    def infer_relative_search_space(self, study, trial):
        return dict(self.source.distributions)

    def sample_relative(self, study, trial, search_space):
        inner = self.base.infer_relative_search_space(study, trial)
        proposal = dict(self.base.sample_relative(study, trial, inner) if inner else {})
        for name, dist in self.source.distributions.items():
            if name not in proposal:
                proposal[name] = self.base.sample_independent(study, trial, name, dist)
        i = self.source.snap(proposal, self.used if self.exclude_used else frozenset())
        self.used.add(i)
        return dict(self.source.params[i])

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.base.reseed_rng()


def build_scheduler(source: CurveSource, s: ReplaySettings, max_t: int, max_concurrent: int):
    """The scheduler a search with these settings builds (hpo.tuning.factory.make_scheduler)."""
    from hpo.tuning.factory import make_scheduler
    from hpo.tuning.space import CalibrationSection, SchedulerSection

    section = SchedulerSection(name=s.scheduler, max_t=max_t,
                               grace_period=s.grace_period, reduction_factor=s.reduction_factor, trust=s.trust,
                               brackets=s.brackets, calibration=CalibrationSection(**s.calibration))
    scheduler = make_scheduler(section, source.distributions, max_concurrent)
    scheduler.set_search_properties(source.metric, source.mode)     # as the Tuner does with its metric
    return scheduler


def replay(source: CurveSource, settings: ReplaySettings) -> ReplayResult:
    """Run the search `settings` describes over `source`'s curves; what it returned and when."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return _Simulation(source, settings).run()


class _Simulation:
    """One replay: the searcher and scheduler a search builds, fed from the source at simulated times."""

    def __init__(self, source: CurveSource, s: ReplaySettings):
        from ray.tune.search import ConcurrencyLimiter

        from hpo.tuning.factory import make_searcher
        from hpo.tuning.priors import with_priors
        from hpo.tuning.space import SearchSection, base_sampler

        self.source, self.s = source, s
        self.max_t = max_t = s.max_t or source.max_t
        if max_t > source.max_t:
            raise ReplayError(f"--max-t: the source has {source.max_t} validations per trial, got {max_t}")
        self.num_samples = self._num_samples()
        search = SearchSection(sampler=s.sampler, seed=s.seed, num_samples=self.num_samples,
                               max_concurrent=min(s.max_concurrent, self.num_samples), feedback=s.feedback,
                               diverged_feedback=s.diverged_feedback)
        self.concurrent = search.max_concurrent
        sampler = with_priors(base_sampler(search), source.distributions, s.defaults, s.prior_share, s.prior_width,
                              s.seed, s.prior_decay)
        snap = s.snap or ("unused" if source.kind == "table" else "nearest")
        sampler = SnapToTable(sampler, source, exclude_used=snap == "unused")
        points = ([dict(s.defaults)] if s.defaults else []) + [p for p in s.points_to_evaluate if p != s.defaults]
        points = [source.params[source.snap(p)] for p in points]      # what will really be replayed
        self.scheduler = build_scheduler(source, s, max_t, self.concurrent)
        searcher = make_searcher(source.distributions, source.metric, source.mode, sampler, max_t=max_t,
                                 search=search, points=points, scheduler=self.scheduler)
        self.limiter = ConcurrencyLimiter(searcher, max_concurrent=self.concurrent)
        self.rng = np.random.default_rng(s.seed)
        np.random.seed(s.seed)      # ASHAScheduler draws a trial's bracket from numpy's global RNG
        self.quality = source.quality()
        self.sign = 1.0 if source.mode == "max" else -1.0
        self.heap: list[tuple[float, int, str, int]] = []     # (finish time, creation order, trial, step)
        self.seq = 0
        self.trials: dict[str, ReplayTrial] = {}
        self.handles: dict[str, Any] = {}
        self.events: list[tuple[float, str, int, float, str]] = []
        self.trajectory: list[tuple[int, float, float]] = []
        self.running: set[str] = set()
        self.epochs = 0
        self.best_observed = -math.inf
        self.now = 0.0

    def _num_samples(self) -> int:
        s, source = self.s, self.source
        if s.num_samples is not None:
            return s.num_samples
        if not s.budget_epochs:
            raise ReplayError("give num_samples or budget_epochs")
        if s.scheduler == "asha" and s.trust == "raw":      # what the budget buys at ASHA's expected cost
            full_epochs = int(source.epochs[self.max_t - 1])
            per_trial = expected_epochs_per_trial(self.max_t, s.grace_period, s.reduction_factor) / self.max_t
            return math.ceil(s.budget_epochs / (per_trial * full_epochs))
        return 10 ** 6                                      # the epoch budget ends the replay

    def out_of_budget(self) -> bool:
        return bool(self.s.budget_epochs) and self.epochs >= self.s.budget_epochs

    def _push(self, tid: str, step: int) -> None:
        t = self.trials[tid]
        heapq.heappush(self.heap, (self.now + self.source.seconds(t.config, t.seed, step), self.seq, tid, step))
        self.seq += 1

    def fill(self) -> None:
        """Free slots ask the searcher for trials, as Ray's controller does."""
        while (len(self.running) < self.concurrent and len(self.trials) < self.num_samples
               and not self.out_of_budget()):
            tid = f"{len(self.trials):05d}"
            params = self.limiter.suggest(tid)
            if params is None:
                return
            self.trials[tid] = ReplayTrial(tid, self.source.snap(params),
                                           int(self.rng.integers(self.source.curves.shape[1])))
            self.handles[tid] = _trial_handle(tid, params)
            self.scheduler.on_trial_add(None, self.handles[tid])
            self.running.add(tid)
            self._push(tid, 1)

    def finish(self, tid: str, result: dict, status: str) -> None:
        t = self.trials[tid]
        t.status = status
        self.scheduler.on_trial_complete(None, self.handles[tid], result)
        self.limiter.on_trial_complete(tid, result=result, error=False)
        self.running.discard(tid)
        if status == "completed" and self.sign * t.last > self.best_observed:
            self.best_observed = self.sign * t.last
            self.trajectory.append((self.epochs, t.last, float(self.quality[t.config])))

    def censor(self, tid: str) -> None:
        """The source never measured this validation (a search's early-stopped trial): end it here."""
        self.trials[tid].status = "censored"
        self.scheduler.on_trial_remove(None, self.handles[tid])
        self.limiter.on_trial_complete(tid, result=None, error=True)
        self.running.discard(tid)

    def step(self, tid: str, step: int) -> None:
        """One validation's result reaches the scheduler, then (unless stopped) the searcher."""
        from ray.tune.schedulers import TrialScheduler

        t, source = self.trials[tid], self.source
        value = source.curves[t.config, t.seed, step - 1]
        diverged = source.diverged_at[t.config, t.seed] == step
        if not diverged and not math.isfinite(value):
            self.censor(tid)
            return
        self.epochs += source.cost(step)
        t.epochs = step
        # as the trainable reports: a diverged step carries its status and no score
        result = {"status": DIVERGED} if diverged else {source.metric: float(value)}
        result.update({ITERATION: step, "trial_id": tid})
        if not diverged:
            t.last = float(value)
        decision = self.scheduler.on_trial_result(None, self.handles[tid], result)
        if decision != TrialScheduler.STOP:
            self.limiter.on_trial_result(tid, result)
        self.events.append((self.now, tid, step, result.get(source.metric, math.nan),
                            DIVERGED if diverged else decision))
        if diverged:
            self.finish(tid, result, "failed")
        elif decision == TrialScheduler.STOP or step >= self.max_t:
            self.finish(tid, result, "completed" if step >= self.max_t else "early_stopped")
        else:
            self._push(tid, step + 1)

    def run(self) -> ReplayResult:
        self.fill()
        while self.heap and not self.out_of_budget():
            self.now, _, tid, step = heapq.heappop(self.heap)
            self.step(tid, step)
            self.fill()
        return ReplayResult(list(self.trials.values()), self.events, self.trajectory, self.epochs,
                            float(np.nanmax(self.quality)), self.scheduler)


def _trial_handle(trial_id: str, params: dict):
    """What Ray's schedulers are handed for a trial: a stub Trial (no actor, no storage).

    The one reach into Ray beyond its public API: `ray.tune.experiment.Trial` is a DeveloperAPI, and
    the schedulers are called with `tune_controller=None` (ASHA never reads it). Tested on Ray 2.60;
    pyproject.toml caps Ray below the next minor release for it."""
    from ray.tune.experiment import Trial

    return Trial("replay", config=params, trial_id=trial_id, stub=True)


def summary(source: CurveSource, settings: ReplaySettings, res: ReplayResult) -> str:
    labels = {"completed": "completed", "early_stopped": "early_stopped", "failed": "failed",
              "censored": "censored", "running": "still running at the budget"}
    counts = {k: sum(t.status == k for t in res.trials) for k in labels}
    best = res.trajectory[-1] if res.trajectory else None
    lines = [f"replay of {source.name}: {settings.sampler}, "
             + (f"ASHA ({settings.trust}) grace {settings.grace_period} rf {settings.reduction_factor}"
               + (f" brackets {settings.brackets}" if settings.brackets > 1 else "") if settings.scheduler == "asha"
                else "no early stopping")
             + f", {settings.max_concurrent} at a time, seed {settings.seed}",
             f"{len(res.trials)} trials ({', '.join(f'{v} {labels[k]}' for k, v in counts.items() if v)}), {res.epochs} epochs"]
    if best:
        t = next(t for t in res.trials if t.last == best[1] and t.status == "completed")
        knobs = ", ".join(f"{k}={_show(v)}" for k, v in source.params[t.config].items())
        lines.append(f"returned config (trial {t.trial_id}, found after {best[0]} epochs): {knobs}")
        lines.append(f"  observed {best[1]:.2f}, mean over seeds {best[2]:.2f}; best in the source "
                     f"{res.best_quality:.2f}; regret {res.best_quality - best[2]:.2f}")
    else:
        lines.append("no trial completed the full budget")
    for rung, stats in sorted(getattr(res.scheduler, "rungs", {}).items()):
        lines.append(stats.line(rung))
    if counts["censored"]:
        lines.append(f"note: {counts['censored']} trials needed epochs the source never measured (ended there)")
    return "\n".join(lines)


def _show(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def table_settings(source: CurveSource, space: Path, trainings: int = TABLE_BUDGET) -> ReplaySettings:
    """What `hpo.replay --table FILE` replays by default: the search and scheduler settings of a space
    file (the demo's: its sampler, concurrency, ASHA ladder and trust), over the table's full length,
    with a budget of `trainings` full trainings. The knobs' defaults come along only where the table has those knobs."""
    from hpo.tuning.space import load_space

    spec = load_space(space)
    settings = ReplaySettings.from_space(spec, max_t=None, num_samples=None,
                                         budget_epochs=trainings * int(source.epochs[-1]))
    if not set(settings.defaults) <= set(source.distributions):
        settings.defaults, settings.points_to_evaluate = {}, []
    settings.points_to_evaluate = [p for p in settings.points_to_evaluate if set(p) <= set(source.distributions)]
    return settings
