"""`python -m hpo.promote SEARCH` — re-train a search's winners at full budget over seeds, register the champion.

    python -m hpo.promote demo                         # search name under ./ray_results
    python -m hpo.promote demo --top-k 3 --seeds 3     # 3 winners x 3 seeds = 9 trainings
    python -m hpo.promote 4f1c...e2                    # the search's MLflow parent run id
    python -m hpo.promote ray_results/demo --address ray://head:10001

What it does:
1. Finds the search (a name under `--storage-path`, a Ray results folder, or the MLflow parent
   run id / experiment name) and reads its trials from MLflow: the nested runs the search logged,
   with their `status` tag and the exact resolved `config.yaml` each trial trained.
2. Ranks only trials that ran the full search budget (`status` completed and `epochs_run` ==
   `scheduler.max_t`), by their metric at that last step: an early-stopped trial's partial score
   is never compared with a finished one. Fewer than K such trials: promotes those and says so.
3. Merges the space file's `promote` section (a partial run config: more epochs, larger crops,
   `eval.tta`, ...) onto each winner's config and writes it to `winners/<search>/rank<k>.yaml`.
4. Trains rank x seed runs as Ray tasks with the search's `resources` (GPU -> CPU fallback with
   one warning), each into `winners/<search>/runs/rank<k>_seed<s>/` (checkpoints, `done.json`).
5. Prints rank, knobs, search score and full-budget mean ± std over seeds; registers the best-mean
   winner's best seed as a new version of the registered model `<search>` with alias `champion`.

Choices:
- Only this driver talks to MLflow. Ray tasks train and write files (`metrics.json` after every
  validation, atomically); the driver polls them while waiting on the tasks and logs curves,
  final metrics, pictures and weights itself. Several processes creating one SQLite store race
  ("table already exists"), and a worker on another node would not even see the driver's
  `mlflow.db`. The cost: on a multi-node cluster `--out` must be storage every node can reach (as Ray's own
  `storage_path` must be), because the driver reads what the tasks write and a rerun resumes
  from the checkpoints there.
- Promoted runs live in the search's MLflow experiment as top-level runs (not nested), tagged
  `ctxtune.search_parent=<parent run id>`, `rank`, `seed`, `ray_trial_id` and
  `ctxtune.search_trial_run` (the trial's run), so the search's own nested-run view is unchanged.
- Seeds are the winner config's `seed` + 0..S-1: every winner sees the same seeds (a paired
  comparison); seed 0 repeats the search's own data order.
- The full-budget score is the final evaluation's `val_miou` (with TTA when `promote` sets
  `eval.tta`), or the search metric when that is `val_pixel_acc`; std is the sample std (n-1).
- Reruns are idempotent: a training with `done.json` is skipped (its MLflow run is completed if a
  killed driver left it open), one with `last.pt` resumes into the same MLflow run (the id is kept
  in its folder), Ray retries a crashed task the same way (`failure.max_retries`). The champion
  is only re-registered when it changed.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpo.config import ConfigError, decode_choice, dump_yaml, get_key, normalize
from hpo.space import SpaceError, SpaceFile, load_space
from hpo.mlflow_store import fail_fast_http, resolve_tracking_uri
from hpo.search import STATE_FILE
from hpo.train import CHECKPOINT, METRICS, RunTracker, WarnOnce, read_done, read_history, register_model, train

CHAMPION = "champion"
POLL_S = 2.0


class PromoteError(ValueError):
    """Bad promotion input: one line saying what was looked for and where."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpo.promote", description=__doc__.split("\n\n")[0])
    p.add_argument("search", help="search name, its MLflow parent run id, or its Ray results folder")
    p.add_argument("--top-k", type=int, default=3, help="how many winners to re-train (default 3)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per winner (default 2)")
    p.add_argument("--address", help="Ray cluster address to join (default: start a local Ray)")
    p.add_argument("--storage-path", help="Ray results directory of the search (default ./ray_results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the search used)")
    p.add_argument("--out", default="winners", help="output root; runs go to <out>/<search>/ (default winners)")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k: expected >= 1")
    if args.seeds < 1:
        p.error("--seeds: expected >= 1")
    return args


# --- finding the search ---------------------------------------------------------------------
@dataclass
class SearchRef:
    name: str
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    space_path: str | None = None


def find_search(query: str, storage_path: str | None = None, tracking_uri: str | None = None) -> SearchRef:
    storage = Path(storage_path or "./ray_results").expanduser().resolve()
    as_path = Path(query).expanduser()
    for state in (as_path / STATE_FILE, as_path, storage / query / STATE_FILE):
        if state.name == STATE_FILE and state.is_file():
            s = json.loads(state.read_text())
            return SearchRef(state.parent.name, s["parent_run_id"], resolve_tracking_uri(tracking_uri or s["tracking_uri"]),
                             s["experiment_id"], s.get("space"))
    uri = resolve_tracking_uri(tracking_uri)
    ref = _find_in_mlflow(query, uri)
    if ref is None:
        raise PromoteError(f"no search '{query}': looked for {storage / query / STATE_FILE} (a search name), "
                           f"{as_path.resolve() / STATE_FILE} (a Ray results folder) and for a search parent run "
                           f"or experiment of that name in MLflow {uri}")
    return ref


def _find_in_mlflow(query: str, uri: str) -> SearchRef | None:
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None          # do not create an empty default store just to look
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        if re.fullmatch(r"[0-9a-f]{32}", query):
            run = client.get_run(query)
            name = run.data.tags.get("ctxtune.search")
            if not name:
                return None
            parent = run
        else:
            exp = client.get_experiment_by_name(query)
            if exp is None:
                return None
            runs = client.search_runs([exp.experiment_id], f"tags.`ctxtune.search` = '{query}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            if not runs:
                return None
            parent, name = runs[0], query
    except Exception:  # noqa: BLE001 - unknown id / unreachable store: reported as "not found" with the URI
        return None
    space = None
    state = Path(parent.data.tags.get("ray_results", "")) / STATE_FILE
    if parent.data.tags.get("ray_results") and state.is_file():
        space = json.loads(state.read_text()).get("space")
    return SearchRef(name, parent.info.run_id, uri, parent.info.experiment_id, space)


def load_search_space(ref: SearchRef, client) -> SpaceFile:
    """The space file the search ran; if it moved, the copy the search logged to its parent run."""
    if ref.space_path and Path(ref.space_path).is_file():
        try:
            return load_space(ref.space_path)
        except SpaceError as err:
            raise PromoteError(f"{ref.space_path}: {err}") from None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            space = yaml.safe_load(Path(client.download_artifacts(ref.parent_run_id, "space.yaml", tmp)).read_text())
            space["base"] = yaml.safe_load(
                Path(client.download_artifacts(ref.parent_run_id, "base_config.yaml", tmp)).read_text())
            path = Path(tmp) / "space.yaml"
            path.write_text(yaml.safe_dump(space, sort_keys=False))
            return load_space(path)
    except SpaceError as err:
        raise PromoteError(f"space.yaml of parent run {ref.parent_run_id}: {err}") from None
    except Exception as exc:  # noqa: BLE001
        raise PromoteError(f"search '{ref.name}': space file {ref.space_path} is gone and parent run "
                           f"{ref.parent_run_id} has no readable space.yaml ({type(exc).__name__})") from None


# --- the trials and the winners -------------------------------------------------------------
@dataclass
class TrialRecord:
    trial_id: str
    run_id: str
    status: str
    epochs_run: int
    score: float | None          # the search metric at the trial's last step


def search_trials(client, ref: SearchRef, metric: str) -> list[TrialRecord]:
    runs = client.search_runs([ref.experiment_id], f"tags.mlflow.parentRunId = '{ref.parent_run_id}'",
                              max_results=10000)
    trials = []
    for run in runs:
        tags = run.data.tags
        epochs = int(tags.get("epochs_run", 0) or 0)
        at_step = {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}
        trials.append(TrialRecord(tags.get("ray_trial_id", run.info.run_id), run.info.run_id,
                                  tags.get("status", "running"), epochs, at_step.get(epochs)))
    return trials


def select_winners(trials: list[TrialRecord], k: int, max_t: int, mode: str = "max"
                   ) -> tuple[list[TrialRecord], str | None]:
    """Top k of the trials that ran the full budget, best first; a note when fewer than k did."""
    eligible = [t for t in trials if t.status == "completed" and t.epochs_run == max_t
                and t.score is not None and math.isfinite(t.score)]
    eligible.sort(key=lambda t: -t.score if mode == "max" else t.score)
    note = None
    if len(eligible) < k:
        note = (f"only {len(eligible)} of {len(trials)} trials ran the full search budget (max_t={max_t}); "
                f"promoting {len(eligible)} instead of {k}")
    return eligible[:k], note


def merge(base: dict, override: dict) -> dict:
    """Deep merge of a partial run config (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def promoted_config(cfg: dict, promote: dict) -> dict:
    try:
        return normalize(merge(cfg, promote))
    except ConfigError as err:
        raise PromoteError(f"promote.{err}") from None


def check_promote_section(spec: SpaceFile) -> None:
    """Bad `promote` keys fail before Ray starts (the model is built on the meta device: no compute)."""
    import torch

    from models import build_model

    cfg = promoted_config(spec.base, spec.promote)
    with torch.device("meta"):
        try:
            build_model(cfg)
        except ValueError as err:
            raise PromoteError(f"promote.{err}") from None


# --- the trainings --------------------------------------------------------------------------
def train_in_worker(cfg: dict, out_dir: str) -> dict:
    """One promoted training inside a Ray task: skip when done, resume from last.pt when present
    (a rerun after a kill, or Ray retrying a crashed task), never touch MLflow."""
    out = Path(out_dir)
    done = read_done(out)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "a") as fh:
        def log(msg: str) -> None:
            fh.write(msg + "\n")
            fh.flush()
        train(cfg, out, resume=(out / CHECKPOINT).is_file(), log=log)
    return read_done(out)


@dataclass
class Job:
    rank: int
    seed: int
    winner: TrialRecord
    cfg: dict
    dir: Path
    tracker: RunTracker
    printed: int = 0
    final: dict | None = None
    error: str | None = None
    skipped: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"rank{self.rank}_seed{self.seed}"


def score_key(metric: str) -> str:
    return metric if metric in ("val_miou", "val_pixel_acc") else "val_miou"


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    fail_fast_http()     # the driver's polling loop must keep going through a tracking outage
    import ray
    from mlflow.tracking import MlflowClient

    ref = find_search(args.search, args.storage_path, args.tracking_uri)
    client = MlflowClient(tracking_uri=ref.tracking_uri)
    spec = load_search_space(ref, client)
    check_promote_section(spec)
    sched = spec.scheduler
    metric, max_t = sched.metric, sched.max_t
    try:
        trials = search_trials(client, ref, metric)
    except Exception as exc:  # noqa: BLE001
        raise PromoteError(f"search '{ref.name}': cannot read its trials from MLflow {ref.tracking_uri} "
                           f"({type(exc).__name__})") from None
    winners, note = select_winners(trials, args.top_k, max_t, sched.mode)
    n_full = sum(t.status == "completed" for t in trials)
    print(f"search '{ref.name}' (parent run {ref.parent_run_id}): {len(trials)} trials, {n_full} ran the full "
          f"budget (max_t={max_t}); early-stopped and failed trials are not ranked", flush=True)
    if note:
        print(note, flush=True)
    if not winners:
        raise PromoteError(f"search '{ref.name}': no trial ran the full budget (max_t={max_t}); nothing to promote")

    out_root = Path(args.out).expanduser().resolve() / ref.name
    (out_root / "runs").mkdir(parents=True, exist_ok=True)
    configs = []
    for rank, w in enumerate(winners, 1):
        with tempfile.TemporaryDirectory() as tmp:
            trial_cfg = yaml.safe_load(Path(client.download_artifacts(w.run_id, "config.yaml", tmp)).read_text())
        cfg = promoted_config(trial_cfg, spec.promote)
        configs.append(cfg)
        header = (f"# rank {rank} of search '{ref.name}': trial {w.trial_id} (MLflow run {w.run_id}), "
                  f"search {metric} {w.score:.4f} at epoch {w.epochs_run}; `promote` section applied\n")
        (out_root / f"rank{rank}.yaml").write_text(header + dump_yaml(cfg))

    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    if gpu and not ray.cluster_resources().get("GPU"):
        print(f"warning: resources.gpu={gpu} but the Ray cluster has no GPU; trainings run on CPU",
              file=sys.stderr, flush=True)
        gpu = 0
        configs = [dict(c, runtime=dict(c["runtime"], device="cpu")) for c in configs]

    warn = WarnOnce()
    jobs: list[Job] = []
    for rank, (w, cfg) in enumerate(zip(winners, configs), 1):
        for i in range(args.seeds):
            seed = cfg["seed"] + i
            run_cfg = normalize(dict(cfg, seed=seed))
            job = Job(rank, seed, w, run_cfg, out_root / "runs" / f"rank{rank}_seed{seed}",
                      RunTracker(ref.tracking_uri, warn))
            jobs.append(job)

    remote = ray.remote(train_in_worker)
    waiting = {}
    for job in jobs:
        done = read_done(job.dir)
        tags = {"ctxtune.search_parent": ref.parent_run_id, "ctxtune.search_name": ref.name,
                "ctxtune.promote": "1", "rank": str(job.rank), "seed": str(job.seed),
                "ray_trial_id": job.winner.trial_id, "ctxtune.search_trial_run": job.winner.run_id,
                f"search_{metric}": f"{job.winner.score:.4f}"}
        if (job.dir / "config.yaml").is_file() and yaml.safe_load((job.dir / "config.yaml").read_text()) != job.cfg:
            raise PromoteError(f"{job.dir} holds a training of another config (the search or its promote section "
                               f"changed since); remove that folder or pass another --out")
        if done is not None and job.tracker.attach(job.dir) and job.tracker.is_finished():
            job.final, job.skipped = done["final"], True
            print(f"{job.label}: finished earlier, skipped (val mIoU {job.final['val_miou']:.2f})", flush=True)
            continue
        job.tracker.start(job.dir, job.cfg, experiment_id=ref.experiment_id,
                          run_name=f"promote-rank{job.rank}-seed{job.seed}", tags=tags, resume=True)
        if done is not None:     # trained, but a killed driver never logged the end
            job.final = done["final"]
            _log_finished(job)
            print(f"{job.label}: finished earlier, logged now (val mIoU {job.final['val_miou']:.2f})", flush=True)
            continue
        resuming = (job.dir / CHECKPOINT).is_file()
        ref_ = remote.options(num_cpus=cpu, num_gpus=gpu, max_retries=spec.failure.max_retries,
                              retry_exceptions=False, name=f"promote-{ref.name}-{job.label}"
                              ).remote(job.cfg, str(job.dir))
        waiting[ref_] = job
        print(f"{job.label}: {'resuming' if resuming else 'starting'} "
              f"({job.cfg['budget']['epochs']} epochs, {cpu} CPU / {gpu} GPU)", flush=True)

    start = time.perf_counter()
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=POLL_S)
        for job in waiting.values():
            _sync_progress(job)
        for r in ready:
            job = waiting.pop(r)
            try:
                done = ray.get(r)
            except Exception as exc:  # noqa: BLE001 - one failed training must not stop the others
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                job.error = lines[-1] if lines else type(exc).__name__
                job.tracker.fail(job.error)
                print(f"{job.label}: FAILED ({job.error})", flush=True)
                continue
            _sync_progress(job)
            job.final = done["final"]
            _log_finished(job)
            print(f"{job.label}: done, val mIoU {job.final['val_miou']:.2f}"
                  f"{' (TTA)' if job.final.get('tta') else ''}", flush=True)
    wall = time.perf_counter() - start

    rows = results_table(winners, jobs, spec, configs, score_key(metric), metric)
    print(f"\npromotion of '{ref.name}' ({len(jobs)} trainings, {wall:.0f} s):")
    print(format_rows(rows, list(spec.space), metric))
    (out_root / "summary.json").write_text(json.dumps(rows, indent=1))
    champion = choose_champion(rows, jobs, sched.mode if score_key(metric) == metric else "max")
    if champion is None:
        print("no training finished: no champion registered", file=sys.stderr)
        return 1
    version = register_champion(client, ref, champion, warn)
    print(f"\nchampion: rank {champion.rank} seed {champion.seed} ({champion.label}); "
          + (f"model '{ref.name}' version {version} has alias '{CHAMPION}'" if version else "not registered")
          + f"\nwinner configs in {out_root}; runs in MLflow {ref.tracking_uri}")
    return 0 if all(j.error is None for j in jobs) else 1


def _sync_progress(job: Job) -> None:
    history = read_history(job.dir)
    job.tracker.log_history(history)
    for h in history:
        if h["epoch"] > job.printed:
            job.printed = h["epoch"]
            print(f"[{time.strftime('%H:%M:%S')}] {job.label} epoch {h['epoch']}/{job.cfg['budget']['epochs']} "
                  f"val mIoU {h['val_miou']:.2f} loss {h['train_loss']:.3f}", flush=True)


def _log_finished(job: Job) -> None:
    try:
        summary = json.loads((job.dir / METRICS).read_text())
    except (OSError, ValueError):
        return
    job.tracker.finish(job.dir, summary)


def results_table(winners, jobs, spec: SpaceFile, configs, key: str, metric: str) -> list[dict]:
    import numpy as np

    rows = []
    for rank, (w, cfg) in enumerate(zip(winners, configs), 1):
        mine = [j for j in jobs if j.rank == rank and j.final is not None]
        scores = [float(j.final[key]) for j in mine]
        knobs = {}
        for k in spec.space:
            try:
                knobs[k] = decode_choice(get_key(cfg, k))
            except KeyError:
                knobs[k] = None
        rows.append({"rank": rank, "trial": w.trial_id, "trial_run": w.run_id, "knobs": knobs,
                     "search_score": w.score, "scores": dict((j.seed, float(j.final[key])) for j in mine),
                     "mean": float(np.mean(scores)) if scores else None,
                     "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else (0.0 if scores else None),
                     "n": len(scores), "failed": sum(1 for j in jobs if j.rank == rank and j.error)})
    return rows


def format_rows(rows: list[dict], keys: list[str], metric: str) -> str:
    cols = ["rank", "trial", *keys, f"search {metric}", "full budget (mean ± std)", "n", "per seed"]
    cells = [cols]
    for r in rows:
        full = f"{r['mean']:.2f} ± {r['std']:.2f}" if r["mean"] is not None else "-"
        seeds = " ".join(f"s{s}:{v:.2f}" for s, v in sorted(r["scores"].items()))
        cells.append([str(r["rank"]), r["trial"], *[_show(r["knobs"][k]) for k in keys],
                      f"{r['search_score']:.2f}", full, str(r["n"]) + (f" ({r['failed']} failed)" if r["failed"] else ""),
                      seeds])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def choose_champion(rows: list[dict], jobs: list[Job], mode: str = "max") -> Job | None:
    """The best seed of the winner with the best mean."""
    scored = [r for r in rows if r["mean"] is not None]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    best = max(scored, key=lambda r: sign * r["mean"])
    seed = max(best["scores"], key=lambda s: sign * best["scores"][s])
    return next(j for j in jobs if j.rank == best["rank"] and j.seed == seed)


def register_champion(client, ref: SearchRef, job: Job, warn: WarnOnce) -> str | None:
    """New version of model `<search>` + alias `champion`, unless the alias already points at this run."""
    from mlflow.exceptions import MlflowException

    run_id = job.tracker.run_id
    if not run_id:
        return None
    try:
        try:
            current = client.get_model_version_by_alias(ref.name, CHAMPION)
            if current.run_id == run_id:
                return str(current.version)
        except MlflowException:
            pass
        version = register_model(client, ref.name, run_id, {
            "rank": job.rank, "seed": job.seed, "ctxtune.search_parent": ref.parent_run_id,
            "ray_trial_id": job.winner.trial_id, "val_miou": f"{job.final['val_miou']:.4f}"})
        client.set_registered_model_alias(ref.name, CHAMPION, version)
        return version
    except Exception as exc:  # noqa: BLE001 - the trainings themselves succeeded
        warn("registering the champion", exc)
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (PromoteError, SpaceError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
