"""Synthetic curve tables with known answers, in the table format of docs/replay.md.

    python -m benchmarks.synthetic_table OUT.npz --early-rank good|inverted [--noise 0.5] [--seed 0]

Each config x in [0, 1]^d gets a final score f(x), a smooth known function (a quadratic bowl around
a random optimum, 40..80), and a learning speed; its curve rises as f(x) * (1 - exp(-epoch / tau)).
`good`: tau is the same for every config, so every epoch ranks configs as the end does (up to noise).
`inverted`: the best configs learn slowest (tau grows with f), so early epochs rank them backwards,
the short-horizon bias of learning-rate schedules. Training seeds add Gaussian noise (`--noise`
points) to every validation. Used by tests (a table where the truth is known) and to check the
replay and the schedulers beyond the embedded task; not a stand-in for real learning curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def make_table(path: Path, *, configs: int = 256, seeds: int = 2, epochs: int = 27, dims: int = 4,
               early_rank: str = "good", noise: float = 0.5, seed: int = 0,
               validations: list[int] | None = None) -> Path:
    from scipy.stats import qmc

    rng = np.random.default_rng(seed)
    x = qmc.Sobol(dims, scramble=True, seed=seed).random(configs)
    optimum = rng.uniform(0.2, 0.8, dims)
    final = 80.0 - 40.0 * np.sum((x - optimum) ** 2, axis=1) / (0.36 * dims)
    if early_rank == "inverted":
        rank = (final - final.min()) / np.ptp(final)
        tau = 0.5 + 0.9 * epochs * rank ** 2          # the best learn slowest
    else:
        tau = np.full(configs, epochs / 6)
    validations = validations or list(range(1, epochs + 1))
    t = np.asarray(validations, float)
    mean = final[:, None] * (1 - np.exp(-t[None, :] / tau[:, None]))
    mean = mean / (1 - np.exp(-epochs / tau))[:, None]          # every config ends at f(x)
    raw = mean[:, None, :] + rng.normal(0, noise, (configs, seeds, len(t)))
    space = {f"knob{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(dims)}
    meta = {"schedules": ["default"], "space": space, "epochs": validations, "metric": "val_miou", "mode": "max",
            "generator": f"benchmarks.synthetic_table early_rank={early_rank} noise={noise} seed={seed}"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, raw=raw[None].astype(np.float32), params=x, meta=np.array(json.dumps(meta)))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic_table", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--early-rank", choices=["good", "inverted"], default="good")
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", type=int, default=256)
    p.add_argument("--epochs", type=int, default=27)
    args = p.parse_args(argv)
    print(make_table(args.out, configs=args.configs, epochs=args.epochs, early_rank=args.early_rank,
                     noise=args.noise, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
