"""Tabulated learning-curve benchmarks: every config of the demo space trained, its curves stored.

    python -m benchmarks.curve_table                 # (re)build benchmarks/tables/msglore_toy_curves.npz
    python -m benchmarks.curve_table --configs 64    # a prefix of the Sobol sequence (any power of 2)
    python -m benchmarks.curve_table --report        # the per-rung rank-correlation table from the file
    python -m benchmarks.curve_table --config search_spaces/configs/msglore_camvid_table.yaml \
        --data-root ../shared/data/camvid --out benchmarks/tables/msglore_camvid_curves.npz
                                                     # the CamVid table (512 runs; 56 min on 2 cores)
    python -m benchmarks.curve_table --report --out benchmarks/tables/msglore_camvid_curves.npz

Default task, the embedded one: toy msglore on the synthetic street scenes (48 train / 32 val
images of 64x128, 64x64 crops, batch 4, 12 SGD steps per epoch, 9 epochs), the demo's knobs
(N3/N4/N5, selection aux weight, lr 1e-3..0.2 log). Configs: a scrambled Sobol sequence (seed 0)
over that space. Each config is trained with 2 training seeds under three LR schedules
(hpo/training/schedules.py):
- `poly`: the papers' poly over the whole budget; also scored with an annealed-evaluation fork
  (`eval.anneal_steps` 4) after epochs 1-4;
- `wsd`: constant LR, linear decay over the last 20%; annealed fork after every epoch 1-8;
- `rung_poly`: poly to 0 at the ASHA rungs of grace 1 / rf 3 / max_t 9 (epochs 1, 3) and at 9.
Stored per (schedule, config, seed): the plain val mIoU after each epoch, the annealed one where
measured (NaN elsewhere), whether and when the loss diverged, and the training seconds. The file
is what hpo.replay and benchmarks.search_efficiency read: searches then cost milliseconds.

Any other data: `--config RUN_CONFIG.yaml` trains the same Sobol configs of the same knobs from
that run config (its model, data, crops, steps per epoch; single-threaded on CPU, validated after
every epoch), `--data-root` overriding its `data.root` (else `data.root` or the dataset's variable,
e.g. `$CAMVID_DATASET`; folder/camvid files are checked before anything trains). With `--config`
the defaults are `--schedules poly`, the config's `budget.epochs`, no annealed forks (`--forks`
adds them), and `--out` is required. `--seeds N` trains seeds 0..N-1, `--epochs E` overrides the
budget. The table's `meta` records the config, the data's name and root, the resolved run config,
the task, `epochs`, the command and the build's date, UTC time, wall seconds and workers.

The CamVid table's task (`search_spaces/configs/msglore_camvid_table.yaml`): the shipped CamVid
search's toy msglore with train and val resized to 120x160, 96x96 crops, 10 steps of 8 images an
epoch, 6 epochs, mIoU on all 101 val images after each. The shipped table
(benchmarks/tables/msglore_camvid_curves.npz, 256 configs x 2 seeds = 512 runs) took 3363 s wall
on this 2-core box (6714 s of training CPU in 2 processes, while the test suite ran beside it); val
mIoU averages 4.0 after epoch 1 and 14.6 after epoch 6, best config 18.9 (mean of seeds). Rank
correlations per epoch, beside the embedded table's: benchmarks/RESULTS.md.

Runs go to a small process pool, results are appended to a `.jsonl` beside the table as they come
in (an interrupted build resumes where it stopped; runs of another length are refused: a new task
needs a new `--out`), and the table is packed from it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.toy_task import toy_config

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "tables" / "msglore_toy_curves.npz"

SPACE = {  # the demo's knobs, lr widened to where it diverges (as in benchmarks.search_efficiency)
    "model.selection.n3": {"type": "int", "low": 2, "high": 16},
    "model.selection.n4": {"type": "int", "low": 2, "high": 32},
    "model.selection.n5": {"type": "int", "low": 4, "high": 64},
    "loss.aux_weights.selection": {"type": "float", "low": 0.1, "high": 1.5},
    "optim.lr": {"type": "float", "low": 1e-3, "high": 0.2, "log": True},
}
TASK = dict(train=48, val=32, size=[64, 128], crop=[64, 64], batch=4, iters=12, epochs=9)
SCHEDULES = {   # name -> (optim overrides, epochs that get an annealed-evaluation fork)
    "poly": ({"schedule": "poly"}, [1, 2, 3, 4]),
    "wsd": ({"schedule": "wsd", "decay_fraction": 0.2}, list(range(1, TASK["epochs"]))),
    "rung_poly": ({"schedule": "rung_poly", "rungs": [1, 3]}, []),
}
SEEDS = (0, 1)
ANNEAL_STEPS = 4


def sobol_configs(n: int, seed: int = 0) -> list[dict]:
    """The first n points of a scrambled Sobol sequence mapped onto SPACE (ints uniform over their range)."""
    from scipy.stats import qmc

    u = qmc.Sobol(d=len(SPACE), scramble=True, seed=seed).random(n)
    out = []
    for row in u:
        cfg = {}
        for x, (key, d) in zip(row, SPACE.items()):
            if d["type"] == "int":
                cfg[key] = int(min(d["low"] + math.floor(x * (d["high"] - d["low"] + 1)), d["high"]))
            elif d.get("log"):
                cfg[key] = float(math.exp(math.log(d["low"]) + x * (math.log(d["high"]) - math.log(d["low"]))))
            else:
                cfg[key] = float(d["low"] + x * (d["high"] - d["low"]))
        out.append(cfg)
    return out


def base_config(data_root: str, epochs: int = TASK["epochs"]) -> dict:
    """The embedded toy task's run config (the default table)."""
    return toy_config(data_root, epochs=epochs, iters_per_epoch=TASK["iters"], crop=TASK["crop"],
                      batch_size=TASK["batch"], val_batch_size=8, overlays=0, anneal_steps=ANNEAL_STEPS)


@dataclass(frozen=True)
class Spec:
    """What one table is built from (the command line, resolved)."""
    table: Path = TABLE
    n_configs: int = 256
    config: Path | None = None        # a run config; None = the embedded toy task
    data_root: str | None = None      # overrides the run config's data.root
    schedules: tuple[str, ...] = tuple(SCHEDULES)
    epochs: int = TASK["epochs"]
    seeds: tuple[int, ...] = SEEDS
    forks: bool = True                # annealed-evaluation forks at the schedules' fork epochs

    def fork_epochs(self, schedule: str) -> list[int]:
        """Epochs after which the schedule's runs also score an annealed fork (none after the last)."""
        if not self.forks:
            return []
        if schedule == "wsd":
            return list(range(1, self.epochs))
        return [e for e in SCHEDULES[schedule][1] if e < self.epochs]

    def command(self) -> str:
        """The command that builds this table (the toy default's reads as it always did)."""
        if self.config is not None:
            parts = ["--config", _rel(self.config)] + (["--data-root", self.data_root] if self.data_root else [])
            parts += ["--schedules", ",".join(self.schedules), "--epochs", str(self.epochs),
                      "--seeds", str(len(self.seeds))] + (["--forks"] if self.forks else [])
            parts += ["--configs", str(self.n_configs), "--out", _rel(self.table)]
        else:
            toy, parts = Spec(), []
            if self.schedules != toy.schedules:
                parts += ["--schedules", ",".join(self.schedules)]
            if self.epochs != toy.epochs:
                parts += ["--epochs", str(self.epochs)]
            if self.seeds != toy.seeds:
                parts += ["--seeds", str(len(self.seeds))]
            if not self.forks:
                parts += ["--no-forks"]
            parts += ["--configs", str(self.n_configs)]
            if Path(self.table).resolve() != TABLE:
                parts += ["--out", _rel(self.table)]
        return " ".join(["python -m benchmarks.curve_table", *parts])


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def task_config(spec: Spec) -> tuple[dict, dict]:
    """(the run config every run of the table starts from, what the table's meta records of the task).
    The toy task generates its synthetic data once under .cache/; a run config's data must exist
    (folder / camvid datasets get their file checks here, before any process starts)."""
    from hpo.config import load_run_config, set_key

    if spec.config is None:
        from datasets.synthetic import ensure

        data_root = str(REPO / ".cache" / "curve_table" / "data")
        ensure(data_root, train=TASK["train"], val=TASK["val"], size=TASK["size"], seed=0)
        return base_config(data_root, spec.epochs), {"data": "synthetic", "task": {**TASK, "epochs": spec.epochs}}
    from datasets import folder

    cfg = load_run_config(spec.config)        # validated, every default filled
    if spec.data_root:
        cfg["data"]["root"] = spec.data_root
    for key, value in {"budget.epochs": spec.epochs, "budget.val_every": 1, "data.workers": 0,
                       "eval.tta": False, "eval.overlays": 0, "eval.anneal_steps": 0,
                       "runtime.device": "cpu", "runtime.threads": 1}.items():
        set_key(cfg, key, value)
    root = folder.preflight(cfg)               # folder/camvid: absolute root ($CAMVID_DATASET), files checked
    if root:
        cfg["data"]["root"] = root
    d, b = cfg["data"], cfg["budget"]
    task = {"crop": d["crop"], "scale": d["scale"], "batch": d["batch_size"], "iters": b["iters_per_epoch"],
            "epochs": spec.epochs}
    return cfg, {"data": d["name"], "data_root": d["root"], "task": task, "run_config": cfg}


def train_one(job: tuple[int, dict, str, int, dict, list[int]]) -> dict:
    """One (config, schedule, seed) run: plain and annealed val mIoU after every epoch."""
    import torch

    from hpo.config import apply_overrides
    from hpo.training.trainer import DivergenceError, Trainer

    index, params, schedule, seed, base, anneal_at = job
    torch.set_num_threads(1)
    optim = SCHEDULES[schedule][0]
    cfg = apply_overrides(base, {**params, **{f"optim.{k}": v for k, v in optim.items()}})
    cfg["seed"] = seed
    epochs = cfg["budget"]["epochs"]
    raw, annealed, diverged_at = [math.nan] * epochs, [math.nan] * epochs, None
    start, cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(cfg, log=lambda *_: None)
    try:
        for e in range(epochs):
            trainer.train_epoch()
            raw[e] = trainer.validate(keep=0).metrics["val_miou"]
            if trainer.epoch in anneal_at:
                annealed[e] = trainer.annealed_validate(ANNEAL_STEPS, keep=0).metrics["val_miou"]
    except DivergenceError:
        diverged_at = trainer.epoch + 1
    return {"index": index, "schedule": schedule, "seed": seed, "raw": raw, "annealed": annealed,
            "diverged_at": diverged_at, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu}


def _finished(spec: Spec) -> dict[tuple, dict]:
    """The runs already in the table's .jsonl, by (config index, schedule, seed)."""
    partial = spec.table.with_suffix(".jsonl")
    if not partial.is_file():
        return {}
    runs = {}
    for line in partial.read_text().splitlines():
        r = json.loads(line)
        if len(r["raw"]) != spec.epochs:
            raise SystemExit(f"{partial}: its runs have {len(r['raw'])} epochs, not {spec.epochs}; "
                             "give another --out (or delete that file)")
        runs[(r["index"], r["schedule"], r["seed"])] = r
    return runs


def build(spec: Spec, workers: int) -> None:
    base, _ = task_config(spec)
    partial = spec.table.with_suffix(".jsonl")
    done = _finished(spec)
    configs = sobol_configs(spec.n_configs)
    jobs = [(i, c, s, seed, base, spec.fork_epochs(s)) for i, c in enumerate(configs) for s in spec.schedules
            for seed in spec.seeds if (i, s, seed) not in done]
    print(f"{len(done)} runs already in {partial.name}, {len(jobs)} to go on {workers} processes", file=sys.stderr)
    t0 = time.perf_counter()
    spec.table.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            runs = stack.enter_context(mp.get_context("spawn").Pool(workers)).imap(train_one, jobs)
        else:
            runs = map(train_one, jobs)
        out = stack.enter_context(open(partial, "a"))
        for k, r in enumerate(runs, 1):
            out.write(json.dumps(r) + "\n")
            out.flush()
            if k % 20 == 0 or k == len(jobs):
                el = time.perf_counter() - t0
                print(f"[{el:6.0f} s] {k}/{len(jobs)} runs, ~{el / k * (len(jobs) - k) / 60:.0f} min left",
                      file=sys.stderr, flush=True)
    pack(spec, wall=time.perf_counter() - t0, workers=workers)


def pack(spec: Spec, wall: float | None = None, workers: int | None = None) -> None:
    """The .jsonl of finished runs -> the compressed table (configs missing a run are left out)."""
    _, described = task_config(spec)
    by = _finished(spec)
    configs = sobol_configs(spec.n_configs)
    schedules, seeds = spec.schedules, spec.seeds
    complete = [i for i in range(spec.n_configs) if all((i, s, seed) in by for s in schedules for seed in seeds)]
    n = len(complete)
    shape = (len(schedules), n, len(seeds), spec.epochs)
    raw, annealed = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    diverged, seconds = np.zeros(shape[:3], np.int16), np.zeros(shape[:3], np.float32)
    for si, s in enumerate(schedules):
        for ci, i in enumerate(complete):
            for ki, seed in enumerate(seeds):
                r = by[(i, s, seed)]
                raw[si, ci, ki] = r["raw"]
                annealed[si, ci, ki] = r["annealed"]
                diverged[si, ci, ki] = r["diverged_at"] or 0
                seconds[si, ci, ki] = r["seconds"]
    params = np.array([[configs[i][k] for k in SPACE] for i in complete], np.float64).reshape(n, len(SPACE))
    forks = any(spec.fork_epochs(s) for s in schedules)
    meta = {"space": SPACE, "task": described["task"],
            "schedules": {k: {"optim": SCHEDULES[k][0], "anneal_epochs": spec.fork_epochs(k)} for k in schedules},
            "seeds": list(seeds), "anneal_steps": ANNEAL_STEPS if forks else None, "sobol_indices": complete,
            "command": spec.command(), "build_wall_seconds": wall, "build_workers": workers,
            "train_cpu_seconds": float(seconds.sum()), "date": time.strftime("%Y-%m-%d"),
            "config": _rel(spec.config) if spec.config else None, "data": described["data"],
            "epochs": list(range(1, spec.epochs + 1)),
            "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for key in ("data_root", "run_config"):
        if key in described:
            meta[key] = described[key]
    arrays = dict(raw=raw, diverged_at=diverged, seconds=seconds, params=params, meta=np.array(json.dumps(meta)))
    if forks:
        arrays["annealed"] = annealed
    np.savez_compressed(spec.table, **arrays)
    print(f"{spec.table}: {n} configs x {len(seeds)} seeds x {len(schedules)} schedules "
          f"({spec.table.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)


def rank_table(table: Path = TABLE, rungs=None) -> str:
    """Per schedule and rung, Spearman rank correlations across configs:
    - rung score -> final score of the *same* training seed (what ASHA in a search sees: a trial's
      early and final scores share its seed's noise), averaged over the seeds;
    - rung score -> final score of *another* seed (does the early score predict the config,
      not its noise?);
    - seed 0 vs seed 1 at the rung (how reproducible the rung score itself is).
    Plus the final scores' seed-to-seed spread (median |seed 0 - seed 1|), and below the table
    Spearman(score, lr) at epoch 1 and at the end. Rungs: default epochs 1, 2, 3, 4, 6 before the last.
    One seed: the other-seed and seed-vs-seed cells are '–'; no annealed scores: no fork rows."""
    import warnings

    from hpo.tuning.rung_check import spearman

    warnings.filterwarnings("ignore", category=RuntimeWarning)     # nanmean over a rung with no score

    def rho(a, b):
        ok = np.isfinite(a) & np.isfinite(b)
        return spearman(list(a[ok]), list(b[ok])) if ok.sum() >= 10 else math.nan

    z = np.load(table)
    meta = json.loads(str(z["meta"]))
    raw = z["raw"].astype(np.float64)
    ann = z["annealed"].astype(np.float64) if "annealed" in z.files else np.full_like(raw, np.nan)
    _, n, seeds, epochs = raw.shape
    rungs = list(rungs) if rungs else [r for r in (1, 2, 3, 4, 6) if r < epochs]
    pairs = [(k, (k + 1) % seeds) for k in range(seeds)] if seeds > 1 else []
    lines = [f"| schedule | correlation | " + " | ".join(f"epoch {r}" for r in rungs) +
             " | final seed spread | best final (mean of seeds) | diverged runs |",
             "|---|---|" + "---:|" * len(rungs) + "---:|---:|---:|"]
    fmt = lambda xs: " | ".join("–" if x != x else f"{x:.2f}" for x in xs)  # noqa: E731
    for si, name in enumerate(meta["schedules"]):
        final = raw[si, :, :, -1]
        spread = np.nanmedian(np.abs(final[:, 0] - final[:, 1])) if seeds > 1 else math.nan
        tail = (f" | {fmt([spread])} | {fmt([np.nanmax(np.nanmean(final, axis=1))])} | "
                f"{int((z['diverged_at'][si] > 0).sum())} of {seeds * n} |")
        for label, src in (("plain", raw[si]), ("annealed fork", ann[si])):
            if np.isnan(src[:, :, [r - 1 for r in rungs]]).all():
                continue
            same = [np.nanmean([rho(src[:, k, r - 1], final[:, k]) for k in range(seeds)]) for r in rungs]
            other = [np.nanmean([rho(src[:, a, r - 1], final[:, b]) for a, b in pairs] or [math.nan])
                     for r in rungs]
            lines.append(f"| {name} | {label} -> final, same seed | {fmt(same)}{tail}")
            lines.append(f"| {name} | {label} -> final, other seed | {fmt(other)} | | | |")
            lines.append(f"| {name} | {label}, seed 0 vs seed 1 at the rung | "
                         f"{fmt([rho(src[:, 0, r - 1], src[:, 1, r - 1]) if seeds > 1 else math.nan for r in rungs])}"
                         " | | | |")
    if "optim.lr" in meta["space"]:
        lr = z["params"][:, list(meta["space"]).index("optim.lr")]
        cells = [f"{name}: epoch 1 {fmt([np.nanmean([rho(raw[si, :, k, 0], lr) for k in range(seeds)])])}, "
                 f"epoch {epochs} {fmt([np.nanmean([rho(raw[si, :, k, -1], lr) for k in range(seeds)])])}"
                 for si, name in enumerate(meta["schedules"])]
        lines += ["", "Spearman(plain score, lr) across configs, mean over seeds: " + "; ".join(cells)]
    return "\n".join(lines)


def _spec(args) -> Spec:
    if args.config is None:
        if args.data_root:
            raise SystemExit("--data-root: only with --config (the toy task generates its own data)")
        names = tuple(args.schedules.split(",")) if args.schedules else tuple(SCHEDULES)
        epochs = args.epochs or TASK["epochs"]
        forks = True if args.forks is None else args.forks
        table = args.table or TABLE
    else:
        from hpo.config import load_yaml

        if args.table is None:
            raise SystemExit("--config: give the table's file with --out")
        names = tuple(args.schedules.split(",")) if args.schedules else ("poly",)
        epochs = args.epochs or int((load_yaml(args.config, "run config").get("budget") or {}).get("epochs") or 0)
        forks = bool(args.forks)
        table = args.table
    unknown = [s for s in names if s not in SCHEDULES]
    if unknown:
        raise SystemExit(f"--schedules: {unknown[0]!r} is not one of {', '.join(SCHEDULES)}")
    if epochs < 1 or args.seeds < 1 or args.configs < 1:
        raise SystemExit("--epochs, --seeds and --configs must be >= 1")
    return Spec(table=Path(table), n_configs=args.configs, config=Path(args.config) if args.config else None,
                data_root=args.data_root, schedules=names, epochs=epochs, seeds=tuple(range(args.seeds)),
                forks=forks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.curve_table", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a run config whose data section says the dataset (default: the embedded "
                                    "toy task on generated scenes)")
    p.add_argument("--data-root", help="the dataset's root (default: the run config's data.root, or its "
                                       "dataset's variable, e.g. $CAMVID_DATASET)")
    p.add_argument("--schedules", help=f"comma list of {', '.join(SCHEDULES)} (default: all three for the toy "
                                       "task, poly with --config)")
    p.add_argument("--epochs", type=int, help=f"epochs per run (default: {TASK['epochs']} for the toy task, the "
                                              "run config's budget.epochs)")
    p.add_argument("--seeds", type=int, default=len(SEEDS), help="training seeds 0..N-1 per config (default 2)")
    p.add_argument("--forks", action=argparse.BooleanOptionalAction, default=None,
                   help="annealed-evaluation forks (default: on for the toy task, off with --config)")
    p.add_argument("--configs", type=int, default=256, help="Sobol points (a power of 2 keeps them balanced)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (1: in-process)")
    p.add_argument("--out", "--table", dest="table", type=Path,
                   help=f"the table file (default {_rel(TABLE)} for the toy task); runs go to FILE.jsonl first")
    p.add_argument("--pack", action="store_true", help="only pack the finished runs into the table")
    p.add_argument("--report", action="store_true", help="print the rank-correlation table of the stored file")
    args = p.parse_args(argv)
    if args.report:
        print(rank_table(args.table or TABLE))
        return 0
    spec = _spec(args)
    if args.pack:
        pack(spec)
    else:
        build(spec, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
