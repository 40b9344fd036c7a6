"""The search as a programmatic API: open it, build its Tuner, run it, finish it.

    from hpo.tuning.space import load_space
    from hpo.execution.runner import run_search

    spec = load_space("search_spaces/demo.yaml", overrides={"experiment.name": "demo-2"})
    rc = run_search(spec, space_path="search_spaces/demo.yaml")      # 0, or 130 when interrupted

`run_search` = `open_search` (resume guard, data prepared and checked, Ray, MLflow experiment +
parent run, the state file beside Ray's results) -> `build_tuner` (the trainable, the searcher and
scheduler from hpo.tuning.factory, the stop rules, the MLflow callback) -> `Tuner.fit` ->
`finish_search` (interruption, leaderboard, best config, the sensitivity report). `python -m
hpo.search` only parses its arguments and calls it (`hpo.run_search` is the same function);
benchmarks call it the same way. Room `hpo.execution`: the Ray side.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpo.config import apply_overrides, dump_yaml, get_key
from hpo.execution.console import prepare_environment, progress_printer
from hpo.results.handle import SearchHandle, read_state, write_state
from hpo.results.leaderboard import format_leaderboard, leaderboard_csv
from hpo.results.ledger import ledger, log_to_run
from hpo.tracking.store import get_or_create_experiment, resolve_tracking_uri
from hpo.training.prepare import absolutize_paths, data_to_generate, prepare_data
from hpo.trials import CALIBRATION_FILE, JOURNAL_FILE, STATE_FILE
from hpo.tuning.space import SpaceError, SpaceFile, encoded_points, make_sampler, optuna_distributions, rung_milestones


@dataclass
class OpenSearch:
    """A search whose Ray, MLflow parent run and state file are ready: what `build_tuner` needs."""
    spec: SpaceFile
    space_path: str
    exp_dir: Path
    base: dict                 # the base config trials apply their knobs to (paths made absolute)
    resources: dict
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    resume: bool

    @property
    def name(self) -> str:
        return self.spec.experiment.name

    def handle(self) -> SearchHandle:
        """The finished search as promote/report/replay see it, with the in-memory space file."""
        return SearchHandle(self.name, self.spec, exp_dir=self.exp_dir, parent_run_id=self.parent_run_id,
                            tracking_uri=self.tracking_uri, experiment_id=self.experiment_id,
                            space_source=self.space_path)


def run_search(spec: SpaceFile, *, space_path: str, resume: bool = False, address: str | None = None,
               report: bool = True, resume_hint: str = "") -> int:
    """Run (or with `resume`, continue) the search `spec`; 0 when every trial finished, 130 when interrupted."""
    search = open_search(spec, space_path=space_path, resume=resume, address=address)
    tuner = build_tuner(search)
    start = time.perf_counter()
    tuner.fit()
    return finish_search(search, time.perf_counter() - start, report=report, resume_hint=resume_hint)


def open_search(spec: SpaceFile, *, space_path: str, resume: bool = False, address: str | None = None) -> OpenSearch:
    from mlflow.tracking import MlflowClient

    prepare_environment()
    name = spec.experiment.name
    storage = Path(spec.experiment.storage_path).expanduser().resolve()
    exp_dir = storage / name
    state_path = exp_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise SpaceError(f"--resume: no search named '{name}' under {storage} (looked for {state_path})")
    if not resume and state_path.is_file():
        raise SpaceError(f"experiment.name: a search named '{name}' already exists under {storage}; "
                         f"use --resume to continue it or --name to start another")
    base = absolutize_paths(spec.base)
    prepare_data(base, log=lambda line: print(line, flush=True))
    connect_ray(address)
    resources, base = fit_resources(spec.resources, base)

    uri = resolve_tracking_uri(spec.experiment.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, name)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        parent_id = read_state(exp_dir)["parent_run_id"]
        client.update_run(parent_id, status="RUNNING")
    else:
        parent_id = client.create_run(experiment_id, run_name=name,
                                      tags={"ctxtune.search": name, "ray_results": str(exp_dir)}).info.run_id
        client.log_text(parent_id, Path(space_path).read_text(), "space.yaml")
        client.log_text(parent_id, dump_yaml(base), "base_config.yaml")
        write_state(exp_dir, parent_id, uri, experiment_id, str(Path(space_path).resolve()))
    print(f"search '{name}': {spec.search.num_samples} trials, {spec.search.max_concurrent} at a time; "
          f"MLflow {uri} (parent run {parent_id}); Ray results {exp_dir}", flush=True)
    return OpenSearch(spec, space_path, exp_dir, base, resources, uri, experiment_id, parent_id, resume)


def build_tuner(search: OpenSearch):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune
    from hpo.tuning.factory import make_scheduler, make_searcher
    from hpo.tracking.trial_logger import MLflowTrialLogger

    from hpo.tuning.stopping import FailureWatch, SearchStopper

    spec, sched = search.spec, search.spec.scheduler
    stopper = SearchStopper(spec.stop, sched.metric, sched.mode, sched.max_t, spec.base["budget"]["val_every"],
                            search.exp_dir, stop_after_failures=spec.failure.stop_after)
    plan = trial_plan(search.resources, search.base, search.exp_dir)
    concurrent = spec.search.max_concurrent
    if plan.max_concurrent is not None and plan.max_concurrent < concurrent:
        print(f"{plan.max_concurrent} data-parallel trial(s) at a time: what the cluster holds "
              f"(search.max_concurrent {concurrent})", flush=True)
        concurrent = plan.max_concurrent
    # On --resume Ray brings back the scheduler, searcher and callbacks it pickled at the start (one
    # pickle, so their links hold); the calibrated scheduler then reloads its own state file.
    scheduler = make_scheduler(sched, optuna_distributions(spec), concurrent,
                               state_path=str(search.exp_dir / CALIBRATION_FILE))
    callbacks = [MLflowTrialLogger(search.tracking_uri, search.experiment_id, search.parent_run_id, search.base,
                                   sched.max_t, metric=sched.metric, rungs=rung_milestones(spec), mode=sched.mode,
                                   scheduler=scheduler),
                 progress_printer(sched.metric, sched.max_t, total=spec.search.num_samples), FailureWatch(stopper),
                 *plan.callbacks]
    if search.resume:
        return tune.Tuner.restore(str(search.exp_dir), trainable=plan.trainable, resume_unfinished=True,
                                  resume_errored=True)
    searcher = make_searcher(
        optuna_distributions(spec), sched.metric, sched.mode, make_sampler(spec), max_t=sched.max_t,
        search=spec.search, points=encoded_points(spec), scheduler=scheduler, study_name=search.name,
        storage=JournalStorage(JournalFileBackend(str(search.exp_dir / JOURNAL_FILE))), stop_rule=stopper)
    return tune.Tuner(
        plan.trainable,
        tune_config=tune.TuneConfig(metric=sched.metric, mode=sched.mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=spec.search.num_samples, max_concurrent_trials=concurrent,
                                    reuse_actors=plan.reuse_actors),
        run_config=tune.RunConfig(name=search.name, storage_path=str(search.exp_dir.parent), verbose=0,
                                  callbacks=callbacks, stop=stopper,
                                  failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def finish_search(search: OpenSearch, wall: float, *, report: bool = True, resume_hint: str = "") -> int:
    """After `Tuner.fit`: 130 when interrupted (resumable), else the leaderboard, best config and report."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from hpo.tuning.stopping import stop_reason

    spec, client = search.spec, MlflowClient(tracking_uri=search.tracking_uri)
    ray_trials = tune.ExperimentAnalysis(str(search.exp_dir)).trials
    unfinished = [t for t in ray_trials if t.status not in ("TERMINATED", "ERROR")]
    stopped = stop_reason(search.exp_dir)
    if unfinished or (len(ray_trials) < spec.search.num_samples and not stopped):
        done = len(ray_trials) - len(unfinished)
        client.set_terminated(search.parent_run_id, "KILLED")
        print(f"\ninterrupted after {wall:.0f} s: {done} of {spec.search.num_samples} trials finished; continue with\n"
              f"  python -m hpo.search {search.space_path} --resume{resume_hint}")
        return 130

    handle = search.handle()
    rows = handle.leaderboard()
    keys, metric = list(spec.space), spec.scheduler.metric
    book = ledger(handle.trials, rung_milestones(spec) + [spec.scheduler.max_t])
    print(f"\nleaderboard ({len(rows)} trials, {wall:.0f} s):\n{format_leaderboard(rows, keys, metric, book.device_kind)}")
    print("\n".join(book.lines()))
    if stopped:
        print(f"search stopped after {len(ray_trials)} of {spec.search.num_samples} trials: {stopped}")
    best = next((r for r in rows if r["status"] == "completed" and r["score"] is not None), None)
    try:
        log_to_run(client, search.parent_run_id, book)
        if stopped:
            client.set_tag(search.parent_run_id, "stop_reason", stopped)
        client.log_text(search.parent_run_id, leaderboard_csv(rows, keys, metric, book.device_kind), "leaderboard.csv")
        if best:
            record = next(t for t in handle.trials if t.trial_id == best["trial"])
            client.log_text(search.parent_run_id, dump_yaml(apply_overrides(search.base, record.params)),
                            "best_config.yaml")
            client.log_metric(search.parent_run_id, f"best_{metric}", best["score"])
            client.set_tag(search.parent_run_id, "best_trial", best["trial"])
        client.set_terminated(search.parent_run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001 - the search itself succeeded
        print(f"warning: could not write the leaderboard to MLflow ({exc})", file=sys.stderr)
    print(f"\n{ui_hint(search.tracking_uri, search.experiment_id)}")
    failed = [t for t in handle.trials if t.status == "failed"]
    if handle.trials and len(failed) == len(handle.trials):
        # nothing to report on; the traces are in the trials' MLflow runs (error tag) and Ray's logs
        print(f"error: all {len(failed)} trials failed" + (f" ({stopped})" if stopped else ""), file=sys.stderr)
        return 1
    if report:
        report_or_warn(handle)
    return 0


# --- pieces --------------------------------------------------------------------------------------

def connect_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start a local Ray; a failure is one line."""
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as err:
            raise SpaceError(_join_error(address, err)) from None


def charged(resources: dict) -> dict:
    """What a trial's cost counts (hpo.results.ledger): its GPUs when it has any, else its CPU cores, of
    every data-parallel worker."""
    workers = resources.get("workers", 1)
    if resources.get("gpu"):
        return {"devices": float(resources["gpu"]) * workers, "device_kind": "gpu"}
    return {"devices": float(resources["cpu"]) * workers, "device_kind": "cpu"}


def fit_resources(section, base: dict, what: str = "trials") -> tuple[dict, dict]:
    """Per-trial resources from the space file's `resources`; with GPUs asked of a cluster that has
    none, one warning and CPU trials (the base config's device becomes cpu, SyncBN goes)."""
    import ray

    resources = {"cpu": section.cpu, "gpu": section.gpu, "workers": section.workers, "sync_bn": section.sync_bn}
    if resources["gpu"] and not ray.cluster_resources().get("GPU"):
        print(f"warning: resources.gpu={resources['gpu']} but the Ray cluster has no GPU; {what} run on CPU",
              file=sys.stderr, flush=True)
        resources.update(gpu=0, sync_bn=False)
        base = dict(base, runtime=dict(base["runtime"], device="cpu"))
    return resources, base


@dataclass
class TrialPlan:
    """How Tune runs one trial: the trainable with its resources, and what that implies."""
    trainable: object
    reuse_actors: bool
    max_concurrent: int | None       # a cap from the cluster's size (data-parallel trials), else None
    callbacks: list


def trial_plan(resources: dict, base: dict, experiment_dir: Path, final_outputs: bool = False) -> TrialPlan:
    """The search's (and promotion's) trainable: a single-process trial, or with `workers` > 1 a
    Tune trial that drives a Ray Train DDP run on `workers` x (cpu, gpu) (hpo.execution.trainable)."""
    import ray
    from ray import tune

    from hpo.execution.trainable import PlacementGroupReaper, run_ddp_trial, run_trial

    cost = charged(resources)
    workers = resources["workers"]
    if workers == 1:
        trainable = tune.with_parameters(run_trial, base=base, final_outputs=final_outputs, **cost)
        return TrialPlan(tune.with_resources(trainable, {"cpu": resources["cpu"], "gpu": resources["gpu"]}),
                         True, None, [])
    per_worker = {"CPU": resources["cpu"], **({"GPU": resources["gpu"]} if resources["gpu"] else {})}
    trainable = tune.with_parameters(run_ddp_trial, base=base, experiment_dir=str(experiment_dir), workers=workers,
                                     worker_resources=per_worker, use_gpu=bool(resources["gpu"]),
                                     sync_bn=resources["sync_bn"], final_outputs=final_outputs, **cost)
    # The Tune trial only drives the Train run, whose workers hold the CPUs/GPUs in a placement group
    # of their own: the trial asks for a token of memory (Tune needs a non-empty request), and the
    # cluster's size caps how many run at once (more would leave Train runs waiting for workers).
    kind = "GPU" if resources["gpu"] else "CPU"
    need = workers * (resources["gpu"] or resources["cpu"])
    have = ray.cluster_resources().get(kind, 0.0)
    if have < need:
        raise SpaceError(f"resources: a trial needs {need:g} {kind}s (workers {workers} x {need / workers:g}) but "
                         f"the Ray cluster has {have:g}")
    return TrialPlan(tune.with_resources(trainable, tune.PlacementGroupFactory([{"CPU": 0, "memory": 2**20}])),
                     False, int(have // need), [PlacementGroupReaper()])


def dry_run(spec: SpaceFile, n: int = 3) -> None:
    """Print the resolved space and `n` configs the sampler proposes (the paper's points first)."""
    import optuna

    from datasets import check_sample, preflight

    prepare_environment()
    preflight(spec.base)                 # a folder dataset's files (no-op for the others)
    print("data: the synthetic set is generated when the search starts" if data_to_generate(spec.base)
          else check_sample(spec.base))
    print(f"search '{spec.experiment.name}': {spec.search.num_samples} trials, sampler {spec.search.sampler}, "
          f"scheduler {spec.scheduler.name}"
          + (f" ({spec.scheduler.trust} early stopping" + (f", rungs at {rung_milestones(spec)}" if rung_milestones(spec)
                                                           else "") + ")" if spec.scheduler.name == "asha" else "")
          + f" (max_t={spec.scheduler.max_t}), "
          f"{spec.resources.cpu} CPU / {spec.resources.gpu} GPU per "
          + (f"worker, {spec.resources.workers} data-parallel workers per trial" if spec.resources.workers > 1
             else "trial"))
    rules = spec.stop.model_dump(exclude_none=True)
    if rules:
        print(f"stop: {rules}")
    print("space:")
    for key, dist in spec.space.items():
        print(f"  {key}: {dist.model_dump(exclude_none=True)}")
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    for point in encoded_points(spec):
        study.enqueue_trial(point)
    dists = optuna_distributions(spec)
    for i in range(n):
        trial = study.ask(dists)
        cfg = apply_overrides(spec.base, {k: trial.params[k] for k in dists})
        print(f"sample {i}: " + ", ".join(f"{k}={get_key(cfg, k)}" for k in dists))
        study.tell(trial, 0.0)


def ui_hint(uri: str, experiment_id: str) -> str:
    """How to look at the runs. `workflowType=machine_learning` makes MLflow 3.17's UI open the runs
    table (with the nested trials) instead of its GenAI overview."""
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"open the runs: {uri.rstrip('/')}/{page}"
    return (f"open the runs: mlflow ui --backend-store-uri {uri}\n"
            f"               then http://127.0.0.1:5000/{page}")


def report_or_warn(handle: SearchHandle) -> None:
    """The sensitivity report at the end of a search: a problem is one warning line, never a failed search."""
    try:
        from hpo.results.report_page import write_report

        write_report(handle)
    except Exception as exc:  # noqa: BLE001 - the search itself succeeded
        print(f"warning: the sensitivity report failed ({type(exc).__name__}: {exc}); "
              f"retry with: python -m hpo.report {handle.exp_dir}", file=sys.stderr)


def _join_error(address: str | None, err: Exception) -> str:
    """One line for a failed `--address`: Ray's own message is deep in a traceback chain."""
    from ray.exceptions import AuthenticationError

    # The auth failure arrives as an AuthenticationError in the chain or only as text in it.
    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain):
        return (f"--address: the Ray cluster at {address} rejected this process's auth token (Ray >= 2.60 "
                f"clusters use token authentication): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                f"RAY_AUTH_TOKEN_PATH) to the cluster's token - `ray get-auth-token` on the head prints it")
    return f"--address: cannot join the Ray cluster at {address} ({str(err).splitlines()[0]})"
