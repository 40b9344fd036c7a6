"""`python -m hpo.search SPACE.yaml` — Ray Tune + Optuna sampler + ASHA, every trial in MLflow.

    python -m hpo.search search_spaces/demo.yaml                # local Ray, MLflow default store
    python -m hpo.search SPACE.yaml --dry-run                   # validate, show a few sampled configs
    python -m hpo.search SPACE.yaml --resume                    # continue an interrupted search
    python -m hpo.search SPACE.yaml --address ray://head:10001  # join a Ray cluster

Bad input (unknown key, bad range, missing file, structural impossibility) is one line on stderr
and exit code 2, before Ray starts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

from hpo.config import ConfigError, apply_overrides, dump_yaml, get_key
from hpo.space import (SpaceError, SpaceFile, encoded_points, load_space, make_sampler, optuna_distributions,
                       rung_milestones, warn_if_from_scratch)

# Beside Ray's experiment state: the parent run id and tracking URI (read by promote and report),
# and the Optuna study.
STATE_FILE = "ctxtune_search.json"
JOURNAL_FILE = "optuna_journal.log"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpo.search", description=__doc__.split("\n\n")[0])
    p.add_argument("space", help="search-space YAML file")
    p.add_argument("--address", help="Ray cluster address to join (default: start a local Ray)")
    p.add_argument("--num-samples", type=int, help="override search.num_samples")
    p.add_argument("--name", help="override experiment.name")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search of this name")
    p.add_argument("--dry-run", action="store_true", help="validate, print the space and sampled configs, exit")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: experiment.tracking_uri or MLflow's)")
    p.add_argument("--storage-path", help="Ray results directory (default: experiment.storage_path)")
    p.add_argument("--no-report", action="store_true", help="skip the sensitivity report at the end")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> SpaceFile:
    spec = load_space(args.space)
    warn_if_from_scratch(spec.base)          # depth >= 50 with pretrained: null -> one loud line
    if args.name:
        spec.experiment.name = args.name
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise SpaceError("--num-samples: expected >= 1")
        spec.search.num_samples = args.num_samples
        spec.search.max_concurrent = min(spec.search.max_concurrent, args.num_samples)
    if args.tracking_uri:
        spec.experiment.tracking_uri = args.tracking_uri
    if args.storage_path:
        spec.experiment.storage_path = args.storage_path
    return spec


def absolutize_paths(base: dict) -> dict:
    """Trials run in their own working directories: make file paths in the config absolute."""
    cfg = dict(base)
    data = dict(cfg["data"])
    if data.get("root"):
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    cfg["data"] = data
    pretrained = cfg["model"].get("backbone", {}).get("pretrained")
    if pretrained and str(pretrained).strip().lower() != "none":     # "none": from scratch, not a path
        model = dict(cfg["model"])
        model["backbone"] = dict(model["backbone"], pretrained=str(Path(pretrained).expanduser().resolve()))
        cfg["model"] = model
    return cfg


def ensure_data(base: dict) -> None:
    """The demo's synthetic set is generated on first use (one line says so)."""
    data = base["data"]
    if data["name"] == "synthetic" and data.get("generate"):
        from datasets.synthetic import ensure

        if ensure(data["root"], **data["generate"]):
            print(f"generated the synthetic dataset in {data['root']}")


def dry_run(spec: SpaceFile, n: int = 3) -> None:
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    print(f"search '{spec.experiment.name}': {spec.search.num_samples} trials, sampler {spec.search.sampler}, "
          f"scheduler {spec.scheduler.name} (max_t={spec.scheduler.max_t}), "
          f"{spec.resources.cpu} CPU / {spec.resources.gpu} GPU per trial")
    print("space:")
    for key, dist in spec.space.items():
        print(f"  {key}: {dist.model_dump(exclude_none=True)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    for point in encoded_points(spec):
        study.enqueue_trial(point)
    dists = optuna_distributions(spec)
    for i in range(n):
        trial = study.ask(dists)
        knobs = {k: trial.params[k] for k in dists}
        cfg = apply_overrides(spec.base, knobs)
        shown = {k: get_key(cfg, k) for k in dists}
        print(f"sample {i}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        study.tell(trial, 0.0)


class ProgressPrinter:
    """A compact line per validation result (Ray's own table is turned off)."""

    def __init__(self, metric: str, max_t: int):
        from ray.tune import Callback

        self.metric, self.max_t = metric, max_t

        outer = self

        class _CB(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
                print(f"[{time.strftime('%H:%M:%S')}] trial {trial.trial_id} "
                      f"epoch {result.get('training_iteration')}/{outer.max_t} "
                      f"{outer.metric} {result.get(outer.metric, float('nan')):.2f} "
                      f"loss {result.get('train_loss', float('nan')):.3f} "
                      f"({done}/{len(trials)} trials done)", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info):
                from hpo.searcher import trial_status
                status = trial_status(trial.last_result, False, outer.max_t)
                print(f"[{time.strftime('%H:%M:%S')}] trial {trial.trial_id} {status}", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                print(f"[{time.strftime('%H:%M:%S')}] trial {trial.trial_id} failed", flush=True)

        self.callback = _CB()


def leaderboard(trials, spec: SpaceFile) -> list[dict]:
    from hpo.searcher import trial_status

    rows = []
    metric, sign = spec.scheduler.metric, 1 if spec.scheduler.mode == "max" else -1
    for t in trials:
        last = t.last_result or {}
        errored = t.status == "ERROR"
        status = trial_status(last, errored, spec.scheduler.max_t)
        # a diverged trial's last result carries a placeholder score: it has none
        best = None if last.get("diverged") else t.metric_analysis.get(metric, {}).get(spec.scheduler.mode)
        rows.append({"trial": t.trial_id, "status": status, "epochs": int(last.get("training_iteration", 0)),
                     metric: best, **{k: _show(v) for k, v in t.config.items()}})
    # completed trials first (only they ran the full budget), then by score, missing scores last
    rows.sort(key=lambda r: (r["status"] != "completed", r[metric] is None, -sign * (r[metric] or 0.0)))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def _show(v):
    from hpo.config import decode_choice

    v = decode_choice(v)
    return round(v, 5) if isinstance(v, float) else v


def format_table(rows: list[dict], keys: list[str], metric: str) -> str:
    cols = ["rank", "trial", *keys, metric, "epochs", "status"]
    cells = [[str(c) for c in cols]]
    for r in rows:
        cells.append([f"{r[c]:.2f}" if isinstance(r.get(c), float) and c == metric
                      else ("-" if r.get(c) is None else str(r.get(c))) for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in cells)


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


def run(spec: SpaceFile, args: argparse.Namespace) -> int:
    # Per-epoch checkpoints of short toy trials trip Ray's snapshot-frequency warning constantly.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # An unreachable tracking server must fail fast into the MLflow logger's queue, not block the
    # driver loop (and with it every trial's results and checkpoints) for minutes per call.
    from hpo.mlflow_store import fail_fast_http

    fail_fast_http()
    import logging
    import warnings

    import optuna
    import ray
    from mlflow.tracking import MlflowClient
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from hpo import tracking
    from hpo.mlflow_store import get_or_create_experiment, resolve_tracking_uri
    from hpo.searcher import HonestOptunaSearch
    from hpo.trainable import run_trial

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = spec.experiment.name
    storage = Path(spec.experiment.storage_path).expanduser().resolve()
    exp_dir = storage / name
    state_path = exp_dir / STATE_FILE
    if args.resume and not state_path.is_file():
        raise SpaceError(f"--resume: no search named '{name}' under {storage} (looked for {state_path})")
    if not args.resume and state_path.is_file():
        raise SpaceError(f"experiment.name: a search named '{name}' already exists under {storage}; "
                         f"use --resume to continue it or --name to start another")

    base = absolutize_paths(spec.base)
    ensure_data(base)

    if not ray.is_initialized():
        try:
            ray.init(address=args.address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        except ConnectionError as err:
            raise SpaceError(_join_error(args.address, err)) from None
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if resources["gpu"] and not ray.cluster_resources().get("GPU"):
        print(f"warning: resources.gpu={resources['gpu']} but the Ray cluster has no GPU; trials run on CPU",
              file=sys.stderr)
        resources["gpu"] = 0
        base["runtime"] = dict(base["runtime"], device="cpu")

    # MLflow: experiment + parent run (recovered on --resume).
    uri = resolve_tracking_uri(spec.experiment.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, name)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if args.resume:
        state = json.loads(state_path.read_text())
        parent_id = state["parent_run_id"]
        client.update_run(parent_id, status="RUNNING")
    else:
        parent = client.create_run(experiment_id, run_name=name,
                                   tags={"ctxtune.search": name, "ray_results": str(exp_dir)})
        parent_id = parent.info.run_id
        client.log_text(parent_id, Path(args.space).read_text(), "space.yaml")
        client.log_text(parent_id, dump_yaml(base), "base_config.yaml")
        state_path.write_text(json.dumps({"parent_run_id": parent_id, "tracking_uri": uri,
                                          "experiment_id": experiment_id, "space": str(Path(args.space).resolve())}))
    print(f"search '{name}': {spec.search.num_samples} trials, {spec.search.max_concurrent} at a time; "
          f"MLflow {uri} (parent run {parent_id}); Ray results {exp_dir}", flush=True)

    sched = spec.scheduler
    max_t = sched.max_t
    rungs = rung_milestones(spec)
    mlflow_cb = tracking.MLflowSearchLogger(uri, experiment_id, parent_id, base, max_t, metric=sched.metric,
                                            rungs=rungs, mode=sched.mode)
    progress = ProgressPrinter(sched.metric, max_t)
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base), resources)

    if args.resume:
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        searcher = HonestOptunaSearch(
            space=optuna_distributions(spec), metric=sched.metric, mode=sched.mode,
            points_to_evaluate=encoded_points(spec) or None, sampler=make_sampler(spec),
            study_name=name, storage=JournalStorage(JournalFileBackend(str(exp_dir / JOURNAL_FILE))),
            max_t=max_t, feedback=spec.search.feedback, diverged_feedback=spec.search.diverged_feedback)
        scheduler = (ASHAScheduler(time_attr=sched.time_attr, max_t=max_t, grace_period=sched.grace_period,
                                   reduction_factor=sched.reduction_factor)
                     if sched.name == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=sched.metric, mode=sched.mode, search_alg=searcher,
                                        scheduler=scheduler, num_samples=spec.search.num_samples,
                                        max_concurrent_trials=spec.search.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage), verbose=0,
                callbacks=[mlflow_cb, progress.callback],
                failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    start = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - start
    # Trial objects (status, last result, config, metric analysis) as Ray saved them.
    trials = tune.ExperimentAnalysis(str(exp_dir), default_metric=sched.metric, default_mode=sched.mode).trials
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished or len(trials) < spec.search.num_samples:
        done = len(trials) - len(unfinished)
        client.set_terminated(parent_id, "KILLED")
        print(f"\ninterrupted after {wall:.0f} s: {done} of {spec.search.num_samples} trials finished; continue with\n"
              f"  python -m hpo.search {args.space} --resume" + (f" --name {name}" if args.name else ""))
        return 130

    rows = leaderboard(trials, spec)
    keys = list(spec.space)
    table = format_table(rows, keys, sched.metric)
    print(f"\nleaderboard ({len(rows)} trials, {wall:.0f} s):\n{table}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["rank", "trial", *keys, sched.metric, "epochs", "status"],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    best = next((r for r in rows if r["status"] == "completed" and r[sched.metric] is not None), None)
    try:
        client.log_text(parent_id, buf.getvalue(), "leaderboard.csv")
        if best:
            best_trial = next(t for t in trials if t.trial_id == best["trial"])
            client.log_text(parent_id, dump_yaml(apply_overrides(base, dict(best_trial.config))), "best_config.yaml")
            client.log_metric(parent_id, f"best_{sched.metric}", best[sched.metric])
            client.set_tag(parent_id, "best_trial", best["trial"])
        client.set_terminated(parent_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001 - the search itself succeeded
        print(f"warning: could not write the leaderboard to MLflow ({exc})", file=sys.stderr)
    print(f"\n{ui_hint(uri, experiment_id)}")
    if not args.no_report:
        _maybe_report(spec, exp_dir)
    return 0


def ui_hint(uri: str, experiment_id: str) -> str:
    """How to look at the runs. `workflowType=machine_learning` makes MLflow 3.17's UI open the runs
    table (with the nested trials) instead of its GenAI overview."""
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"open the runs: {uri.rstrip('/')}/{page}"
    return (f"open the runs: mlflow ui --backend-store-uri {uri}\n"
            f"               then http://127.0.0.1:5000/{page}")


def _maybe_report(spec: SpaceFile, exp_dir: Path) -> None:
    # The search already succeeded: a report problem is one warning line, never a failed search.
    try:
        from hpo import report

        report.main([str(exp_dir)])
    except Exception as exc:  # noqa: BLE001
        print(f"warning: the sensitivity report failed ({type(exc).__name__}: {exc}); "
              f"retry with: python -m hpo.report {exp_dir}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        spec = prepare(args)
        if args.dry_run:
            dry_run(spec)
            return 0
        return run(spec, args)
    except (SpaceError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        # datasets/models raise ValueError subclasses with one-line messages.
        if type(err).__name__ in ("DatasetError", "ConfigError"):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    sys.exit(main())
