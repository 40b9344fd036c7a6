"""Search efficiency on the synthetic task: epochs a search spends until it holds a config within 1 mIoU
point of the best config any method found, and the best mIoU at a fixed epoch budget.

    python -m benchmarks.search_efficiency --quick     # budget 12 x 4 epochs, ASHA rungs 1/2/4, 3 seeds: ~6 min
    python -m benchmarks.search_efficiency             # budget 27 x 9 epochs, ASHA rungs 1/3/9, 3 seeds: ~27 min
    (durations on the shared 2-core box, 2 trials at a time)
    python -m benchmarks.search_efficiency --write     # also replace this section of benchmarks/RESULTS.md

Methods, each run with 3 search seeds (`search.seed`; the training seed stays fixed, so a config
always scores the same), all through the unmodified `hpo.search.run` on one local Ray:
- random, full budget: RandomSampler, no scheduler (every trial trains `max_t` epochs);
- ASHA + random;
- ASHA + TPE, `search.feedback: complete` — Optuna as Ray's OptunaSearch feeds it out of the box
  (an ASHA-stopped trial is told COMPLETE with its early score);
- ASHA + TPE, `search.feedback: pruned` — ctxtune's feedback (told PRUNED, intermediate values kept).
Same space, concurrency and (about) the same epoch budget for all: random search gets `trials`
full trainings (`trials x max_t` epochs); the ASHA searches get as many trials as that budget buys
at ASHA's expected cost per trial (grace 1: 1 + (rf-1)/rf x ... epochs; e.g. 2.33 for max_t 9, rf 3).

Counting: every validation result is one epoch (val_every 1). The chronology is the driver's: the
MLflow timestamps of the per-epoch `val_miou` points (the driver logs each result as it arrives).
"Best so far" follows ctxtune's leaderboard: the best val mIoU of trials that *completed* the full
budget, known from the moment they complete; early-stopped trials never count (their scores are
early ones). The target is the best such score over all methods and seeds, minus 1 point.
A run that never reaches it is reported as "not reached" (it needed more than its total epochs).
The ASHA anchor ("a good config in about the time of one full training") is about wall time with
many parallel workers; here the epochs are also shown in units of one full training (`max_t` epochs).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from benchmarks.results import write_section

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Search efficiency (random vs ASHA + random / TPE, Optuna feedback)"

METHODS = {
    "random, full budget": ({"sampler": "random"}, False),
    "ASHA + random": ({"sampler": "random"}, True),
    "ASHA + TPE, feedback complete (Ray default)": ({"sampler": "tpe", "feedback": "complete"}, True),
    "ASHA + TPE, feedback pruned (ctxtune)": ({"sampler": "tpe", "feedback": "pruned"}, True),
}
RANDOM, TPE_COMPLETE, TPE_PRUNED = ("random, full budget", "ASHA + TPE, feedback complete (Ray default)",
                                    "ASHA + TPE, feedback pruned (ctxtune)")
PRESETS = {  # trials, max_t, ASHA reduction factor, SGD steps per epoch, synthetic train/val images
    "quick": dict(trials=12, max_t=4, rf=2, iters=10, train=32, val=8),
    "full": dict(trials=27, max_t=9, rf=3, iters=12, train=48, val=12),
}


def asha_epochs_per_trial(max_t: int, rf: float, grace: int = 1) -> float:
    """Expected epochs of one trial under ASHA: a fraction 1/rf^k of the trials passes rung k."""
    rungs, r = [], grace
    while r < max_t:
        rungs.append(r)
        r = round(r * rf)
    total, prev = 0.0, 0
    for k, rung in enumerate(rungs + [max_t]):
        total += (rung - prev) / rf ** k
        prev = rung
    return total


def num_trials(method: str, p: dict) -> int:
    if not METHODS[method][1]:
        return p["trials"]
    return math.ceil(p["trials"] * p["max_t"] / asha_epochs_per_trial(p["max_t"], p["rf"]))


def base_config(data_root: Path, p: dict) -> dict:
    from hpo.config import load_yaml

    cfg = load_yaml(REPO / "search_spaces" / "configs" / "msglore_toy.yaml")
    cfg["data"].update({"root": str(data_root), "generate": None, "crop": [64, 64], "batch_size": 4,
                        "val_batch_size": 4, "workers": 0})
    cfg["budget"] = {"epochs": p["max_t"], "iters_per_epoch": p["iters"], "val_every": 1}
    cfg["eval"] = {"tta": False, "overlays": 0}
    cfg["runtime"] = {"device": "cpu", "threads": 1}
    return cfg


SPACE = {  # the demo's knobs (selection counts, selection aux weight, learning rate)
    "model.selection.n3": {"type": "int", "low": 2, "high": 16},
    "model.selection.n4": {"type": "int", "low": 2, "high": 32},
    "model.selection.n5": {"type": "int", "low": 4, "high": 64},
    "loss.aux_weights.selection": {"type": "float", "low": 0.1, "high": 1.5},
    "optim.lr": {"type": "float", "low": 1e-3, "high": 0.2, "log": True},
}


def write_space(work: Path, name: str, base: dict, method: str, seed: int, p: dict, concurrency: int) -> Path:
    import yaml

    search_over, asha = METHODS[method]
    scheduler = ({"name": "asha", "max_t": p["max_t"], "grace_period": 1, "reduction_factor": p["rf"]}
                 if asha else {"name": "none", "max_t": p["max_t"]})
    space = {
        "experiment": {"name": name, "storage_path": str(work / "ray_results"),
                       "tracking_uri": f"sqlite:///{work}/mlflow.db"},
        "base": base, "space": SPACE,
        "search": {"seed": seed, "num_samples": num_trials(method, p), "max_concurrent": concurrency,
                   **search_over},
        "scheduler": scheduler,
        "resources": {"cpu": 1, "gpu": 0},
        "failure": {"max_retries": 0},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run_search(work: Path, name: str, space: Path) -> float:
    from hpo import search

    args = search.parse_args([str(space), "--no-report"])
    spec = search.prepare(args)
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = search.run(spec, args)
    if rc != 0:
        raise RuntimeError(f"search {name} exited {rc}:\n{out.getvalue()[-2000:]}")
    return time.perf_counter() - start


def epoch_events(uri: str, name: str) -> list[dict]:
    """Every logged validation of every trial of search `name`, in the order the driver received them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    parent = client.search_runs([exp.experiment_id], f"tags.`ctxtune.search` = '{name}'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=10000)
    events = []
    for run in children:
        for m in client.get_metric_history(run.info.run_id, "val_miou"):
            events.append({"trial": run.data.tags["ray_trial_id"], "step": m.step, "ts": m.timestamp,
                           "value": m.value})
    events.sort(key=lambda e: (e["ts"], e["step"]))
    return events


def trajectory(events: list[dict], max_t: int) -> list[tuple[int, float]]:
    """(epochs consumed, best completed-trial score) at every completion that changed the best."""
    best_of_trial: dict[str, float] = {}
    best, points = -math.inf, []
    for epochs, e in enumerate(events, 1):
        best_of_trial[e["trial"]] = max(best_of_trial.get(e["trial"], -math.inf), e["value"])
        if e["step"] == max_t and best_of_trial[e["trial"]] > best:
            best = best_of_trial[e["trial"]]
            points.append((epochs, best))
    return points


def epochs_to(points: list[tuple[int, float]], target: float) -> int | None:
    return next((ep for ep, best in points if best >= target), None)


def best_at(points: list[tuple[int, float]], budget: int) -> float | None:
    reached = [best for ep, best in points if ep <= budget]
    return reached[-1] if reached else None


def summarize(runs: list[dict], max_t: int, budget: int) -> tuple[str, str, dict]:
    target = max(r["points"][-1][1] for r in runs if r["points"]) - 1.0
    seeds = sorted({r["seed"] for r in runs})
    by_method = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in METHODS}
    med = {}
    for m, rs in by_method.items():
        hits = [epochs_to(r["points"], target) for r in rs]
        med[m] = statistics.median(math.inf if h is None else h for h in hits)
    lines = [f"| method | trials per search | epochs to within 1 point (seeds {', '.join(map(str, seeds))}) | median | "
             f"median in full trainings | × random, full budget | epochs used per search | completed / early-stopped / failed trials | wall per search (s) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for m, rs in by_method.items():
        hits = [epochs_to(r["points"], target) for r in rs]
        shown = ", ".join(str(h) if h is not None else f"not reached (>{r['epochs']})" for h, r in zip(hits, rs))
        mm = med[m]
        ratio = mm / med[RANDOM] if math.isfinite(mm) and math.isfinite(med[RANDOM]) else math.nan
        counts = [sum(r["status"].get(k, 0) for r in rs) for k in ("completed", "early_stopped", "failed")]
        lines.append(f"| {m} | {rs[0]['trials']} | {shown} | {_num(mm)} | {_num(mm / max_t, 1)} | {_num(ratio, 2)} | "
                     f"{statistics.mean(r['epochs'] for r in rs):.0f} | {' / '.join(map(str, counts))} | "
                     f"{statistics.mean(r['wall'] for r in rs):.0f} |")
    table1 = "\n".join(lines)
    lines = [f"| method | best mIoU after {budget} epochs (per seed) | mean | best mIoU at the end of the search (per seed) | mean |",
             "|---|---|---:|---|---:|"]
    for m, rs in by_method.items():
        at_b = [best_at(r["points"], budget) for r in rs]
        end = [r["points"][-1][1] if r["points"] else None for r in rs]
        lines.append(f"| {m} | {', '.join(_num(v, 2) for v in at_b)} | {_mean(at_b)} | "
                     f"{', '.join(_num(v, 2) for v in end)} | {_mean(end)} |")
    return table1, "\n".join(lines), {"target": target, "median": med}


def _num(v, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "not reached"
    return f"{v:.{digits}f}"


def _mean(values) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "–"
    return f"{statistics.mean(got):.2f}" + ("" if len(got) == len(values) else f" ({len(got)} seeds)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_efficiency", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="budget of 12 trainings of 4 epochs, small epochs (minutes)")
    p.add_argument("--seeds", default="0,1,2", help="search seeds (default 0,1,2)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--budget", type=int, help="fixed epoch budget for the second table (default 3 x max_t)")
    p.add_argument("--methods", help="comma list of method numbers 1-4 (default: all)")
    p.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    names = list(METHODS)
    methods = names if not args.methods else [names[int(i) - 1] for i in args.methods.split(",")]
    budget = args.budget or 3 * preset["max_t"]
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    import ray

    from datasets.synthetic import ensure

    command = ("python -m benchmarks.search_efficiency " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ctxtune-efficiency-") as tmp:
        work = Path(tmp)
        ensure(str(work / "data"), train=preset["train"], val=preset["val"], size=[64, 128], seed=0)
        base = base_config(work / "data", preset)
        uri = f"sqlite:///{work}/mlflow.db"
        ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        try:
            for seed in seeds:                       # seeds outermost: an interrupted run still covers all methods
                for i, method in enumerate(methods):
                    name = f"eff-m{names.index(method) + 1}-s{seed}"
                    wall = run_search(work, name, write_space(work, name, base, method, seed, preset,
                                                              args.concurrency))
                    events = epoch_events(uri, name)
                    status = _statuses(uri, name)
                    runs.append({"method": method, "seed": seed, "wall": wall, "epochs": len(events),
                                 "trials": num_trials(method, preset),
                                 "points": trajectory(events, preset["max_t"]), "status": status})
                    best = runs[-1]["points"][-1][1] if runs[-1]["points"] else float("nan")
                    print(f"[{time.perf_counter() - t_start:5.0f} s] {method}, seed {seed}: {len(events)} epochs, "
                          f"best completed {best:.2f} mIoU, {wall:.0f} s", file=sys.stderr, flush=True)
        finally:
            ray.shutdown()
    total = time.perf_counter() - t_start
    table1, table2, info = summarize(runs, preset["max_t"], budget)
    med = info["median"]
    verdicts = []
    def ratio(m: str) -> str:
        if not math.isfinite(med[m]):
            return "did not reach the target in most seeds"
        return f"needed {med[m] / med[RANDOM]:.2f}x random search's epochs"

    if RANDOM in med and math.isfinite(med[RANDOM]):
        verdicts += [f"{m} {ratio(m)} (goal <= 0.25x)" for m in (TPE_COMPLETE, TPE_PRUNED) if m in med]
    if TPE_PRUNED in med and TPE_COMPLETE in med:
        verdicts.append(f"median epochs to the target, pruned-aware vs out-of-the-box feedback: {_num(med[TPE_PRUNED])} "
                        f"vs {_num(med[TPE_COMPLETE])} (goal: no worse)")
    p_ = preset
    section = "\n".join([
        HEADING, "",
        f"{datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores), {args.concurrency} trials at a time, "
        f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (shared machine; the counts "
        f"are epochs, not seconds, so load does not change them). Command: `{command}`, {total / 60:.0f} min in all.",
        f"Task: toy msglore on synthetic scenes ({p_['train']} train / {p_['val']} val images, 64x64 crops, batch 4, "
        f"{p_['iters']} SGD steps per epoch); space = the demo's (N3/N4/N5, selection aux weight, lr 1e-3..0.2 log); "
        f"max_t {p_['max_t']} epochs, ASHA grace 1, reduction factor {p_['rf']}; a budget of {p_['trials']} full "
        f"trainings ({p_['trials'] * p_['max_t']} epochs) per search. "
        f"Target: {info['target']:.2f} mIoU (best completed config over all searches, "
        f"{info['target'] + 1:.2f}, minus 1 point). Counting rules: module docstring of "
        f"`benchmarks/search_efficiency.py`.", "",
        table1, "", table2, "",
        "; ".join(verdicts) + ".",
    ])
    print(section)
    if args.write:
        write_section(HEADING, section)
    return 0


def _statuses(uri: str, name: str) -> dict[str, int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.status != ''", max_results=10000)
    out: dict[str, int] = {}
    for r in runs:
        if "ray_trial_id" in r.data.tags:
            out[r.data.tags["status"]] = out.get(r.data.tags["status"], 0) + 1
    return out


if __name__ == "__main__":
    sys.exit(main())
