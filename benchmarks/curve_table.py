"""The tabulated learning-curve benchmark of the embedded task: every config trained once, stored.

    python -m benchmarks.curve_table                 # (re)build benchmarks/tables/msglore_toy_curves.npz
    python -m benchmarks.curve_table --configs 64    # a prefix of the Sobol sequence (any power of 2)
    python -m benchmarks.curve_table --report        # the per-rung rank-correlation table from the file

Task: toy msglore on the synthetic street scenes (48 train / 32 val images of 64x128, 64x64 crops,
batch 4, 12 SGD steps per epoch, 9 epochs), the demo's knobs (N3/N4/N5, selection aux weight, lr
1e-3..0.2 log). Configs: a scrambled Sobol sequence (seed 0) over that space. Each config is
trained with 2 training seeds under three LR schedules (hpo/schedules.py):
- `poly`: the papers' poly over the whole budget; also scored with an annealed-evaluation fork
  (`eval.anneal_steps` 4) after epochs 1-4;
- `wsd`: constant LR, linear decay over the last 20%; annealed fork after every epoch 1-8;
- `rung_poly`: poly to 0 at the ASHA rungs of grace 1 / rf 3 / max_t 9 (epochs 1, 3) and at 9.
Stored per (schedule, config, seed): the plain val mIoU after each epoch, the annealed one where
measured (NaN elsewhere), whether and when the loss diverged, and the training seconds. The file
is what hpo.replay and benchmarks.search_efficiency read: searches then cost milliseconds.

Runs go to a small process pool, results are appended to a `.jsonl` beside the table as they come
in (an interrupted build resumes where it stopped), and the table is packed from it at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
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


def base_config(data_root: str) -> dict:
    return toy_config(data_root, epochs=TASK["epochs"], iters_per_epoch=TASK["iters"], crop=TASK["crop"],
                      batch_size=TASK["batch"], val_batch_size=8, overlays=0, anneal_steps=ANNEAL_STEPS)


def train_one(job: tuple[int, dict, str, int, str]) -> dict:
    """One (config, schedule, seed) run: plain and annealed val mIoU after every epoch."""
    import torch

    from hpo.config import apply_overrides
    from hpo.engine import DivergenceError, Trainer

    index, params, schedule, seed, data_root = job
    torch.set_num_threads(1)
    optim, anneal_at = SCHEDULES[schedule]
    cfg = apply_overrides(base_config(data_root), {**params, **{f"optim.{k}": v for k, v in optim.items()}})
    cfg["seed"] = seed
    epochs = TASK["epochs"]
    raw, annealed, diverged_at = [math.nan] * epochs, [math.nan] * epochs, None
    start = time.perf_counter()
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
            "diverged_at": diverged_at, "seconds": time.perf_counter() - start}


def build(n_configs: int, workers: int, table: Path) -> None:
    from datasets.synthetic import ensure

    cache = REPO / ".cache" / "curve_table"
    data_root = str(cache / "data")
    ensure(data_root, train=TASK["train"], val=TASK["val"], size=TASK["size"], seed=0)
    partial = table.with_suffix(".jsonl")
    done = set()
    if partial.is_file():
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            done.add((r["index"], r["schedule"], r["seed"]))
    configs = sobol_configs(n_configs)
    jobs = [(i, c, s, seed, data_root) for i, c in enumerate(configs) for s in SCHEDULES for seed in SEEDS
            if (i, s, seed) not in done]
    print(f"{len(done)} runs already in {partial.name}, {len(jobs)} to go on {workers} processes", file=sys.stderr)
    t0 = time.perf_counter()
    table.parent.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(workers) as pool, open(partial, "a") as out:
        for k, r in enumerate(pool.imap(train_one, jobs), 1):
            out.write(json.dumps(r) + "\n")
            out.flush()
            if k % 20 == 0 or k == len(jobs):
                el = time.perf_counter() - t0
                print(f"[{el:6.0f} s] {k}/{len(jobs)} runs, ~{el / k * (len(jobs) - k) / 60:.0f} min left",
                      file=sys.stderr, flush=True)
    pack(n_configs, table, wall=time.perf_counter() - t0, workers=workers)


def pack(n_configs: int, table: Path, wall: float | None = None, workers: int | None = None) -> None:
    """The .jsonl of finished runs -> the compressed table (configs missing a run are left out)."""
    runs = [json.loads(line) for line in table.with_suffix(".jsonl").read_text().splitlines()]
    configs = sobol_configs(n_configs)
    by = {(r["index"], r["schedule"], r["seed"]): r for r in runs}
    complete = [i for i in range(n_configs) if all((i, s, seed) in by for s in SCHEDULES for seed in SEEDS)]
    n = len(complete)
    shape = (len(SCHEDULES), n, len(SEEDS), TASK["epochs"])
    raw, annealed = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    diverged, seconds = np.zeros(shape[:3], np.int16), np.zeros(shape[:3], np.float32)
    for si, s in enumerate(SCHEDULES):
        for ci, i in enumerate(complete):
            for ki, seed in enumerate(SEEDS):
                r = by[(i, s, seed)]
                raw[si, ci, ki] = r["raw"]
                annealed[si, ci, ki] = r["annealed"]
                diverged[si, ci, ki] = r["diverged_at"] or 0
                seconds[si, ci, ki] = r["seconds"]
    params = np.array([[configs[i][k] for k in SPACE] for i in complete], np.float64)
    meta = {"space": SPACE, "task": TASK, "schedules": {k: {"optim": v[0], "anneal_epochs": v[1]}
                                                         for k, v in SCHEDULES.items()},
            "seeds": list(SEEDS), "anneal_steps": ANNEAL_STEPS, "sobol_indices": complete,
            "command": f"python -m benchmarks.curve_table --configs {n_configs}",
            "build_wall_seconds": wall, "build_workers": workers,
            "train_cpu_seconds": float(seconds.sum()), "date": time.strftime("%Y-%m-%d")}
    np.savez_compressed(table, raw=raw, annealed=annealed, diverged_at=diverged, seconds=seconds,
                        params=params, meta=np.array(json.dumps(meta)))
    print(f"{table}: {n} configs x {len(SEEDS)} seeds x {len(SCHEDULES)} schedules "
          f"({table.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)


def rank_table(table: Path = TABLE, rungs=(1, 2, 3, 4, 6)) -> str:
    """Per schedule and rung, Spearman rank correlations across configs:
    - rung score -> final score of the *same* training seed (what ASHA in a search sees: a trial's
      early and final scores share its seed's noise), averaged over the two seeds;
    - rung score -> final score of the *other* seed (does the early score predict the config,
      not its noise?);
    - seed 0 vs seed 1 at the rung (how reproducible the rung score itself is).
    Plus the final scores' seed-to-seed spread (median |seed 0 - seed 1|)."""
    import warnings

    from hpo.rung_check import spearman

    warnings.filterwarnings("ignore", category=RuntimeWarning)     # nanmean over a rung with no score

    def rho(a, b):
        ok = np.isfinite(a) & np.isfinite(b)
        return spearman(list(a[ok]), list(b[ok])) if ok.sum() >= 10 else math.nan

    z = np.load(table)
    meta = json.loads(str(z["meta"]))
    raw, ann = z["raw"].astype(np.float64), z["annealed"].astype(np.float64)
    n = raw.shape[1]
    lines = [f"| schedule | correlation | " + " | ".join(f"epoch {r}" for r in rungs) +
             " | final seed spread | best final (mean of seeds) | diverged runs |",
             "|---|---|" + "---:|" * len(rungs) + "---:|---:|---:|"]
    for si, name in enumerate(meta["schedules"]):
        final = raw[si, :, :, -1]
        spread = np.nanmedian(np.abs(final[:, 0] - final[:, 1]))
        tail = (f" | {spread:.2f} | {np.nanmax(np.nanmean(final, axis=1)):.2f} | "
                f"{int((z['diverged_at'][si] > 0).sum())} of {2 * n} |")
        for label, src in (("plain", raw[si]), ("annealed fork", ann[si])):
            if np.isnan(src[:, :, [r - 1 for r in rungs]]).all():
                continue
            same = [np.nanmean([rho(src[:, k, r - 1], final[:, k]) for k in (0, 1)]) for r in rungs]
            other = [np.nanmean([rho(src[:, k, r - 1], final[:, 1 - k]) for k in (0, 1)]) for r in rungs]
            fmt = lambda xs: " | ".join("–" if x != x else f"{x:.2f}" for x in xs)  # noqa: E731
            lines.append(f"| {name} | {label} -> final, same seed | {fmt(same)}{tail}")
            lines.append(f"| {name} | {label} -> final, other seed | {fmt(other)} | | | |")
            lines.append(f"| {name} | {label}, seed 0 vs seed 1 at the rung | "
                         f"{fmt([rho(src[:, 0, r - 1], src[:, 1, r - 1]) for r in rungs])} | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.curve_table", description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=256, help="Sobol points (a power of 2 keeps them balanced)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--table", type=Path, default=TABLE)
    p.add_argument("--pack", action="store_true", help="only pack the finished runs into the table")
    p.add_argument("--report", action="store_true", help="print the rank-correlation table of the stored file")
    args = p.parse_args(argv)
    if args.report:
        print(rank_table(args.table))
    elif args.pack:
        pack(args.configs, args.table)
    else:
        build(args.configs, args.workers, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
