"""Promotion: re-train a search's best full-budget trials over seeds on Ray Tune, register the champion.

    from hpo.results.handle import find_search
    from hpo.execution.promotion import promote
    promote(find_search("demo"), top_k=2, seeds=2, out="winners")

1. Ranks only trials that ran the full search budget (`completed`, `scheduler.max_t` validations),
   by their score at that budget: an early-stopped trial's partial score is never compared with a
   finished one. Fewer than K such trials: promotes those and says so.
2. The promoted base is the search's base config with the space file's `promote` section merged in
   (a partial run config: more epochs, larger crops, `eval.tta`, ...). A winner's config is that base
   with the winner's knobs; it is written to `<out>/<search>/rank<k>.yaml`. The `promote` section may
   not set a searched key (each winner keeps its own value): that is a one-line error.
3. The K x S trainings are one Tune run, a grid over (rank, seed), in `<out>/<search>/promotion/`:
   the search's own trainable (hpo.execution.trainable, with its final evaluation and weights on) and the
   search's own MLflow callback (hpo.tracking.trial_logger) with the `PromotedRuns` layout: top-level runs in
   the search's experiment, named `promote-rank<k>-seed<s>`, tagged `ctxtune.search_parent`, `rank`,
   `seed`, `ray_trial_id` (the search trial promoted) and `ctxtune.search_trial_run`. Tune places
   them with the space file's `resources` (GPU -> CPU fallback with one warning) and retries a
   crashed one from its last checkpoint (`failure.max_retries`).
4. Prints rank, knobs, search score and full-budget mean ± std over seeds; registers the best-mean
   winner's best seed as a new version of the registered model `<search>` with alias `champion`.

Choices:
- Seeds are the winner config's `seed` + 0..S-1: every winner sees the same seeds (a paired
  comparison); seed 0 repeats the search's own data order.
- The full-budget score is the final evaluation's value of the space file's `scheduler.metric`
  (`final_<metric>`, with TTA when `promote` sets `eval.tta`); std is the sample std (n-1). The
  registered version is tagged with that metric's name and value.
- Reruns are idempotent: the same command restores the Tune run (`promotion.json` records what it
  trains; another set of winners, seeds or configs is an error, not a silent mix): finished
  trainings are skipped, unfinished ones resume from their last checkpoint into the same MLflow
  run. The champion is only re-registered when it changed.
- Only the driver talks to MLflow, as in a search; `--out` must be storage every node of a
  multi-node cluster can reach (it is the Tune run's storage path).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpo.config import ConfigError, apply_overrides, deep_merge, dump_yaml, flatten, normalize
from hpo.tracking.layouts import PromotedRuns
from hpo.tracking.store import find_runs, register_model
from hpo.results.handle import SearchHandle, TrialRecord
from hpo.tuning.space import SpaceFile, max_reports

CHAMPION = "champion"
TUNE_NAME = "promotion"
STATE = "promotion.json"


class PromoteError(ValueError):
    """Bad promotion input: one line saying what was looked for and where."""


# --- winners and their configs ---------------------------------------------------------------------

def select_winners(trials: list[TrialRecord], k: int, max_t: int, mode: str = "max"
                   ) -> tuple[list[TrialRecord], str | None]:
    """Top k of the trials that ran the full budget, best first; a note when fewer than k did."""
    eligible = [t for t in trials if t.status == "completed" and t.last_step == max_t
                and t.last_value is not None and math.isfinite(t.last_value)]
    eligible.sort(key=lambda t: -t.last_value if mode == "max" else t.last_value)
    note = None
    if len(eligible) < k:
        note = (f"only {len(eligible)} of {len(trials)} trials ran the full search budget (max_t={max_t}); "
                f"promoting {len(eligible)} instead of {k}")
    return eligible[:k], note


def promoted_base(spec: SpaceFile) -> dict:
    """The search's base with the `promote` section merged in; bad keys fail before Ray starts."""
    from hpo.training.prepare import absolutize_paths, check_model

    touched = set(flatten(spec.promote)) & set(spec.space)
    if touched:
        raise PromoteError(f"promote.{sorted(touched)[0]}: a searched key; each winner keeps its own value")
    try:
        base = normalize(deep_merge(spec.base, spec.promote))
    except ConfigError as err:
        raise PromoteError(f"promote.{err}") from None
    try:
        check_model(base)          # structural checks on the meta device: no memory, no compute
    except ValueError as err:
        raise PromoteError(f"promote.{err}") from None
    return absolutize_paths(base)


@dataclass
class Job:
    """One promoted training: a winner (rank) and a seed."""
    rank: int
    seed: int
    seed_index: int
    winner: TrialRecord
    overrides: dict          # the winner's knobs + its seed, applied to the promoted base

    @property
    def label(self) -> str:
        return f"rank{self.rank}_seed{self.seed}"


def make_jobs(winners: list[TrialRecord], base: dict, seeds: int) -> list[Job]:
    jobs = []
    for rank, w in enumerate(winners, 1):
        first = int(w.params.get("seed", base["seed"]))
        for i in range(seeds):
            jobs.append(Job(rank, first + i, i, w, {**w.params, "seed": first + i}))
    return jobs


@dataclass(frozen=True)
class _Pick:
    """`tune.sample_from` callable: a job's value of `key`, the job chosen by the grid's (rank, seed index)."""
    values: dict
    key: str

    def __call__(self, spec):
        return self.values[f"{spec.config['ctxtune.rank']}/{spec.config['ctxtune.seed_index']}"][self.key]


def param_space(jobs: list[Job]) -> dict:
    """A Tune grid over (rank, seed index); every other key follows from the grid point."""
    from ray import tune

    values = {f"{j.rank}/{j.seed_index}": {**j.overrides, "ctxtune.seed": j.seed} for j in jobs}
    keys = sorted({k for v in values.values() for k in v})
    return {"ctxtune.rank": tune.grid_search(sorted({j.rank for j in jobs})),
            "ctxtune.seed_index": tune.grid_search(sorted({j.seed_index for j in jobs})),
            **{k: tune.sample_from(_Pick(values, k)) for k in keys}}


# --- the run ------------------------------------------------------------------------------------------

def promote(handle: SearchHandle, *, top_k: int = 3, seeds: int = 2, out: str | Path = "winners",
            address: str | None = None) -> int:
    """Train the winners; 0 when all trainings finished, 1 when some failed, 130 when interrupted."""
    from ray import tune

    from hpo.execution.console import prepare_environment, progress_printer
    from hpo.execution.runner import connect_ray, fit_resources, trial_plan
    from hpo.tracking.trial_logger import MLflowTrialLogger

    prepare_environment()
    spec, metric, max_t = handle.spec, handle.metric, handle.max_t
    if handle.parent_run_id is None or handle.client is None:
        raise PromoteError(f"search '{handle.name}': no MLflow parent run in reach ({handle.tracking_uri}); "
                           f"pass --tracking-uri")
    base = promoted_base(spec)
    trials = handle.trials
    winners, note = select_winners(trials, top_k, max_t, handle.mode)
    print(f"search '{handle.name}' (parent run {handle.parent_run_id}): {len(trials)} trials, "
          f"{sum(t.status == 'completed' for t in trials)} ran the full budget (max_t={max_t}); early-stopped and "
          f"failed trials are not ranked; space file from {handle.space_source}", flush=True)
    if note:
        print(note, flush=True)
    if not winners:
        raise PromoteError(f"search '{handle.name}': no trial ran the full budget (max_t={max_t}); nothing to promote")

    connect_ray(address)
    resources, base = fit_resources(spec.resources, base, "trainings")
    out_root = Path(out).expanduser().resolve() / handle.name
    out_root.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(winners, base, seeds)
    for rank, w in enumerate(winners, 1):
        cfg = normalize(apply_overrides(base, next(j for j in jobs if j.rank == rank).overrides))
        header = (f"# rank {rank} of search '{handle.name}': trial {w.trial_id} (MLflow run {w.run_id}), "
                  f"search {metric} {w.last_value:.4f} at epoch {w.last_step}; `promote` section applied\n")
        (out_root / f"rank{rank}.yaml").write_text(header + dump_yaml(cfg))
    state = {"parent_run_id": handle.parent_run_id, "base": base,
             "jobs": [{"rank": j.rank, "seed": j.seed, "overrides": j.overrides} for j in jobs]}
    resuming = _check_state(out_root, state)
    layout = PromotedRuns(handle.parent_run_id, handle.name, {
        rank: {"ray_trial_id": w.trial_id, "ctxtune.search_trial_run": w.run_id or "",
               f"search_{metric}": f"{w.last_value:.4f}"} for rank, w in enumerate(winners, 1)})
    epochs = max_reports(base)
    logger = MLflowTrialLogger(handle.tracking_uri, handle.experiment_id, handle.parent_run_id, base, epochs,
                               metric=metric, mode=handle.mode, layout=layout)
    path = out_root / TUNE_NAME
    plan = trial_plan(resources, base, path, final_outputs=True)
    callbacks = [logger, progress_printer(metric, epochs, name=_trial_label, total=len(jobs)), *plan.callbacks]
    if resuming:
        _print_restored(path, metric)
        tuner = tune.Tuner.restore(str(path), trainable=plan.trainable, resume_unfinished=True, resume_errored=True)
    else:
        for j in jobs:
            print(f"{j.label}: starting ({base['budget']['epochs']} epochs, {resources['cpu']} CPU / "
                  f"{resources['gpu']} GPU" + (f" x {resources['workers']} workers" if resources["workers"] > 1
                                               else "") + ")", flush=True)
        tuner = tune.Tuner(plan.trainable, param_space=param_space(jobs),
                           tune_config=tune.TuneConfig(max_concurrent_trials=plan.max_concurrent,
                                                       reuse_actors=plan.reuse_actors),
                           run_config=tune.RunConfig(
                               name=TUNE_NAME, storage_path=str(out_root), verbose=0, callbacks=callbacks,
                               failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                               checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    start = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - start

    finished = {(int(t.config["ctxtune.rank"]), int(t.config["ctxtune.seed"])): t
                for t in tune.ExperimentAnalysis(str(path)).trials}
    if len(finished) < len(jobs) or any(t.status not in ("TERMINATED", "ERROR") for t in finished.values()):
        done = sum(t.status in ("TERMINATED", "ERROR") for t in finished.values())
        print(f"\ninterrupted after {wall:.0f} s: {done} of {len(jobs)} trainings finished; run the same command "
              f"again to continue", flush=True)
        return 130
    key = f"final_{metric}"            # the final evaluation's score (with TTA when eval.tta)
    scores = {(j.rank, j.seed): (finished[(j.rank, j.seed)].last_result or {}).get(key) for j in jobs}
    rows = results_table(winners, jobs, scores, spec)
    print(f"\npromotion of '{handle.name}' ({len(jobs)} trainings, {wall:.0f} s):")
    print(format_rows(rows, list(spec.space), metric))
    cost = cost_line(handle, finished.values())
    print(cost["line"], flush=True)
    spreads = [r["std"] for r in rows if r["n"] > 1]
    if spreads:
        print(f"seed spread (mean std over seeds of a winner): {sum(spreads) / len(spreads):.2f} - the "
              f"stop.seed_spread of a plateau rule for this task", flush=True)
    (out_root / "summary.json").write_text(json.dumps({"winners": rows, "cost": cost}, indent=1))
    champion = choose_champion(rows, handle.mode)
    if champion is None:
        print("no training finished: no champion registered", file=sys.stderr)
        return 1
    runs = {(r.data.tags.get("rank"), r.data.tags.get("seed")): r.info.run_id
            for r in find_runs(handle.client, handle.experiment_id, layout.filter())}
    rank, seed = champion
    version = register_champion(handle, runs.get((str(rank), str(seed))), rank, seed, scores[champion],
                                winners[rank - 1])
    print(f"\nchampion: rank {rank} seed {seed} (rank{rank}_seed{seed}); "
          + (f"model '{handle.name}' version {version} has alias '{CHAMPION}'" if version else "not registered")
          + f"\nwinner configs in {out_root}; runs in MLflow {handle.tracking_uri}")
    return 0 if all(s is not None for s in scores.values()) else 1


def cost_line(handle: SearchHandle, trials) -> dict:
    """What the promotion spent (hpo.results.ledger), printed and logged to the search's parent run as
    `promotion_device_seconds`, beside the search's own `cost_*`."""
    from hpo.results.ledger import kind_of, ledger, unit_of

    results = [t.last_result or {} for t in trials]
    total = sum(float(r.get("device_seconds_total", 0.0)) for r in results)
    kind = kind_of(r.get("device_kind") for r in results)
    unit = unit_of(kind)
    search = ledger(handle.trials, [handle.max_t])
    line = f"cost: {total:.0f} {unit}-seconds ({total / 3600:.2f} h) for {len(results)} trainings"
    if search.full_training:
        line += f", {total / search.full_training:.1f}x one full-budget search trial; the search cost {search.total:.0f}"
    try:
        handle.client.log_metric(handle.parent_run_id, "promotion_device_seconds", total)
    except Exception as exc:  # noqa: BLE001 - the trainings themselves succeeded
        print(f"warning: could not log the promotion's cost to MLflow ({type(exc).__name__})", file=sys.stderr)
    return {"device_seconds": total, "device_kind": kind, "line": line}


def _trial_label(trial) -> str:
    return f"rank{trial.config['ctxtune.rank']}_seed{trial.config['ctxtune.seed']}"


def _check_state(out_root: Path, state: dict) -> bool:
    """True when this promotion ran before (resume it); an error when it trained something else."""
    from ray import tune

    recorded, path = out_root / STATE, out_root / TUNE_NAME
    if recorded.is_file() and tune.Tuner.can_restore(str(path)):
        if json.loads(recorded.read_text()) != json.loads(json.dumps(state)):
            raise PromoteError(f"{out_root} holds a promotion of other winners, seeds or configs (the search, "
                               f"--top-k/--seeds or its promote section changed since); remove that folder or "
                               f"pass another --out")
        return True
    recorded.write_text(json.dumps(state, indent=1))
    return False


def _print_restored(path: Path, metric: str) -> None:
    from ray import tune

    for t in tune.ExperimentAnalysis(str(path)).trials:
        label = _trial_label(t)
        if t.status == "TERMINATED":
            score = (t.last_result or {}).get(f"final_{metric}")
            print(f"{label}: finished earlier, skipped"
                  + (f" ({metric} {score:.2f})" if isinstance(score, float) else ""), flush=True)
        else:
            print(f"{label}: {'resuming' if t.checkpoint else 'starting'}", flush=True)


# --- the table and the champion ----------------------------------------------------------------------

def results_table(winners: list[TrialRecord], jobs: list[Job], scores: dict, spec: SpaceFile) -> list[dict]:
    import numpy as np

    rows = []
    for rank, w in enumerate(winners, 1):
        mine = {j.seed: scores[(j.rank, j.seed)] for j in jobs if j.rank == rank}
        ok = [float(v) for v in mine.values() if v is not None]
        rows.append({"rank": rank, "trial": w.trial_id, "trial_run": w.run_id,
                     "knobs": {k: w.params.get(k) for k in spec.space},
                     "search_score": w.last_value, "scores": {s: float(v) for s, v in mine.items() if v is not None},
                     "mean": float(np.mean(ok)) if ok else None,
                     "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else (0.0 if ok else None),
                     "n": len(ok), "failed": len(mine) - len(ok)})
    return rows


def format_rows(rows: list[dict], keys: list[str], metric: str) -> str:
    from hpo.config import display_value
    from hpo.results.leaderboard import aligned

    cols = ["rank", "trial", *keys, f"search {metric}", "full budget (mean ± std)", "n", "per seed"]
    cells = [cols]
    for r in rows:
        full = f"{r['mean']:.2f} ± {r['std']:.2f}" if r["mean"] is not None else "-"
        seeds = " ".join(f"s{s}:{v:.2f}" for s, v in sorted(r["scores"].items()))
        knobs = [display_value(r["knobs"][k]) for k in keys]
        cells.append([str(r["rank"]), r["trial"], *[f"{v:.4g}" if isinstance(v, float) else str(v) for v in knobs],
                      f"{r['search_score']:.2f}", full, str(r["n"]) + (f" ({r['failed']} failed)" if r["failed"] else ""),
                      seeds])
    return aligned(cells)


def choose_champion(rows: list[dict], mode: str = "max") -> tuple[int, int] | None:
    """(rank, seed): the best seed of the winner with the best mean."""
    scored = [r for r in rows if r["mean"] is not None]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    best = max(scored, key=lambda r: sign * r["mean"])
    return best["rank"], max(best["scores"], key=lambda s: sign * best["scores"][s])


def register_champion(handle: SearchHandle, run_id: str | None, rank: int, seed: int, score: float,
                      winner: TrialRecord) -> str | None:
    """New version of model `<search>` + alias `champion`, unless the alias already points at this run."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    client = handle.client
    try:
        try:
            current = client.get_model_version_by_alias(handle.name, CHAMPION)
            if current.run_id == run_id:
                return str(current.version)
        except MlflowException:
            pass
        version = register_model(client, handle.name, run_id, {
            "rank": rank, "seed": seed, "ctxtune.search_parent": handle.parent_run_id,
            "ray_trial_id": winner.trial_id, handle.metric: f"{score:.4f}"})
        client.set_registered_model_alias(handle.name, CHAMPION, version)
        return version
    except Exception as exc:  # noqa: BLE001 - the trainings themselves succeeded
        print(f"warning: registering the champion failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
