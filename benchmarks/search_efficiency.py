"""Search efficiency on the replay: random search vs ASHA (+ random / TPE, feedbacks, schedules).

    python -m benchmarks.search_efficiency                  # 50 paired seeds, all methods (minutes)
    python -m benchmarks.search_efficiency --seeds 100 --write   # also replace the RESULTS.md section + plot

Every search is `hpo.replay` over the tabulated learning curves of the embedded task
(`benchmarks/tables/msglore_toy_curves.npz`, built by `python -m benchmarks.curve_table`): the real
HonestOptunaSearch / Optuna sampler / Ray ASHAScheduler, in simulated time. That makes 50+ seeds
per method cheap, which is what resolving differences between methods takes.

Protocol (fixed before looking at results):
- Budget: `--budget` epochs per search (default 64 full trainings = 576 epochs), 4 trials at a time.
  Every delivered validation is one epoch. Each method's search ends when the budget is spent.
- Seeds are paired: seed k drives the sampler and the training-seed draws of every method.
- What a search returns: its completed trial with the best *observed* final score (the
  leaderboard's pick); its quality: that config's final score averaged over the 2 tabulated
  training seeds, under the schedule the method trains with.
- Target, per LR schedule: the top 2% (98th percentile) of the tabulated configs' qualities under
  that schedule; "epochs to target": epochs spent when the returned config's quality first reaches
  it. A search that never does is censored at the budget (infinity; medians can be censored).
- Regret: best quality under the method's schedule minus the returned config's quality, at every
  epoch. Search efficiency is judged within a training recipe; the returned config's absolute mIoU
  is reported beside it to compare recipes.
- Statistics: medians over seeds with bootstrap 95% intervals (2000 resamples of the seeds, bounds
  taken as order statistics so censored runs stay infinite); the ratio to random search is the
  ratio of medians, bootstrapped over paired seeds, against random full-budget search under the
  same LR schedule where the table has it (wsd), else under poly (the papers' schedule).
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.results import write_section

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Search efficiency on the replay (tabulated curves, paired seeds)"
PLOT = REPO / "benchmarks" / "img" / "regret_curves.png"
RANDOM = "random, full budget"

# The paper's point (msglore: N3/N4/N5 = 11/21/32, alpha = 0.7; the demo's lr) as knob defaults
# (hpo/priors.py): evaluated first, and with a prior share, a share of trials drawn around it.
PAPER = {"model.selection.n3": 11, "model.selection.n4": 21, "model.selection.n5": 32,
         "loss.aux_weights.selection": 0.7, "optim.lr": 0.02}

# label -> (table schedule, rungs see annealed forks, ReplaySettings overrides)
METHODS = {
    RANDOM: ("poly", False, dict(sampler="random", scheduler="none")),
    "ASHA + random": ("poly", False, dict(sampler="random")),
    "ASHA + TPE, feedback complete (Ray default)": ("poly", False, dict(sampler="tpe", feedback="complete")),
    "ASHA + TPE, feedback pruned (ctxtune)": ("poly", False, dict(sampler="tpe")),
    "ASHA grace 3 + TPE": ("poly", False, dict(sampler="tpe", grace_period=3)),
    "ASHA 3 brackets + TPE": ("poly", False, dict(sampler="tpe", brackets=3)),
    "ASHA + TPE, poly + annealed rungs": ("poly", True, dict(sampler="tpe")),
    "random, full budget, wsd": ("wsd", False, dict(sampler="random", scheduler="none")),
    "random, full budget, rung_poly": ("rung_poly", False, dict(sampler="random", scheduler="none")),
    "ASHA + random, wsd + annealed rungs": ("wsd", True, dict(sampler="random")),
    "ASHA + TPE, wsd + annealed rungs": ("wsd", True, dict(sampler="tpe")),
    "ASHA + TPE, rung_poly": ("rung_poly", False, dict(sampler="tpe")),
    "ASHA grace 3 + random": ("poly", False, dict(sampler="random", grace_period=3)),
    "ASHA grace 3 + TPE, poly + annealed rungs": ("poly", True, dict(sampler="tpe", grace_period=3)),
    "ASHA grace 3 + TPE, wsd + annealed rungs": ("wsd", True, dict(sampler="tpe", grace_period=3)),
    "ASHA grace 3 + TPE, rung_poly": ("rung_poly", False, dict(sampler="tpe", grace_period=3)),
    "random + paper prior 0.2, full budget": ("poly", False, dict(sampler="random", scheduler="none",
                                                                   defaults=PAPER, prior_share=0.2)),
    "ASHA grace 3 + TPE, paper point first": ("poly", False, dict(sampler="tpe", grace_period=3, defaults=PAPER,
                                                                   prior_share=0.0)),
    "ASHA grace 3 + TPE, paper prior 0.2": ("poly", False, dict(sampler="tpe", grace_period=3, defaults=PAPER,
                                                                 prior_share=0.2)),
    "ASHA grace 3 + TPE, paper prior 0.5": ("poly", False, dict(sampler="tpe", grace_period=3, defaults=PAPER,
                                                                 prior_share=0.5)),
    "ASHA + TPE, paper prior 0.2": ("poly", False, dict(sampler="tpe", defaults=PAPER, prior_share=0.2)),
    "ASHA grace 3 + TPE, paper prior 0.5 fading (decay 10)": ("poly", False, dict(
        sampler="tpe", grace_period=3, defaults=PAPER, prior_share=0.5, prior_decay=10)),
}
BASE = dict(grace_period=1, reduction_factor=3, max_concurrent=4)


def _sources(table: Path) -> dict:
    from hpo.replay import from_table

    return {(sched, ann): from_table(table, sched, ann) for sched, ann, _ in METHODS.values()}


def targets(sources: dict, quantile: float = 0.98) -> dict[str, tuple[float, float]]:
    """Per LR schedule: (top-quantile target, best quality) over the table's configs."""
    out = {}
    for (sched, _), src in sources.items():
        q = src.quality()
        q = q[np.isfinite(q)]
        out[sched] = (float(np.quantile(q, quantile)), float(q.max()))
    return out


_WORK: dict = {}


def _init(table: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    _WORK["sources"] = _sources(Path(table))
    _WORK["targets"] = targets(_WORK["sources"])


def run_one(job: tuple[str, int, int]) -> dict:
    """One (method, seed) replay: epochs to target, regret curve on a grid, final regret."""
    from hpo.replay import ReplaySettings, replay

    method, seed, budget = job
    sched, ann, over = METHODS[method]
    source = _WORK["sources"][(sched, ann)]
    settings = ReplaySettings(seed=seed, budget_epochs=budget, num_samples=budget, **{**BASE, **over})
    t0 = time.perf_counter()
    res = replay(source, settings)
    target = _WORK["targets"][sched][0]
    grid = np.linspace(0, budget, 65).astype(int)
    hit = res.epochs_to(target)
    final_regret = res.regret_at(budget)
    return {"method": method, "seed": seed, "epochs_to_target": hit if hit is not None else math.inf,
            "regret": [res.regret_at(int(e)) for e in grid], "grid": grid.tolist(),
            "final_regret": final_regret, "final_quality": res.best_quality - final_regret,
            "trials": len(res.trials),
            "completed": sum(t.status == "completed" for t in res.trials), "seconds": time.perf_counter() - t0}


def bootstrap_median(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (n, len(x)))
    meds = np.median(x[idx], axis=1)
    # lower/higher, not interpolated: censored runs are inf, and inf - inf would make the bound NaN
    return (float(np.median(x)), float(np.percentile(meds, 2.5, method="lower")),
            float(np.percentile(meds, 97.5, method="higher")))


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """median(a) / median(b) over paired seeds, with its bootstrap 95% interval (inf allowed)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n, len(a)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
        point = float(np.median(a) / np.median(b))
    ratios = np.where(np.isnan(ratios), np.inf, ratios)      # inf / inf: both censored
    return (point if point == point else math.inf, float(np.percentile(ratios, 2.5, method="lower")),
            float(np.percentile(ratios, 97.5, method="higher")))


def _f(v: float, d: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "censored" if math.isinf(v) else f"{v:.{d}f}"


def summarize(runs: list[dict]) -> tuple[str, dict]:
    by = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in METHODS}
    by = {m: rs for m, rs in by.items() if rs}
    def baseline(m: str) -> str:
        """Random full-budget search under the same schedule where the table has one, else poly's."""
        same = next((b for b in by if b.startswith(RANDOM) and METHODS[b][0] == METHODS[m][0]), None)
        return same or RANDOM

    lines = ["| method | schedule (rung score) | median epochs to target [95% CI] | × random, same schedule [95% CI] | "
             "censored | median final regret [95% CI] | mean final regret | median mIoU of the returned config | "
             "trials per search |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    info = {}
    for m, rs in by.items():
        sched, ann, _ = METHODS[m]
        e = np.array([r["epochs_to_target"] for r in rs], float)
        reg = np.array([r["final_regret"] for r in rs], float)
        med, lo, hi = bootstrap_median(e)
        rmed, rlo, rhi = bootstrap_median(reg)
        base = baseline(m)
        rand = np.array([r["epochs_to_target"] for r in by[base]], float)
        ratio = bootstrap_ratio(e, rand) if not m.startswith(RANDOM) else None
        info[m] = {"median": med, "ratio": ratio, "final_regret": rmed, "censored": int(np.isinf(e).sum()),
                   "n": len(rs), "baseline": base}
        lines.append(f"| {m} | {sched}{' (annealed fork)' if ann else ''} | {_f(med)} [{_f(lo)}, {_f(hi)}] | "
                     + (f"{_f(ratio[0], 2)} [{_f(ratio[1], 2)}, {_f(ratio[2], 2)}]"
                        if ratio else "baseline") +
                     f" | {int(np.isinf(e).sum())}/{len(rs)} | {rmed:.2f} [{rlo:.2f}, {rhi:.2f}] | "
                     f"{np.mean(reg[np.isfinite(reg)]) if np.isfinite(reg).any() else math.nan:.2f} | "
                     f"{np.median([r['final_quality'] for r in rs]):.2f} | {np.mean([r['trials'] for r in rs]):.0f} |")
    return "\n".join(lines), info


def plot(runs: list[dict], path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [RANDOM, "ASHA + random", "ASHA + TPE, feedback pruned (ctxtune)", "ASHA grace 3 + TPE",
            "random, full budget, wsd", "ASHA + TPE, wsd + annealed rungs", "ASHA grace 3 + TPE, wsd + annealed rungs",
            "ASHA + TPE, rung_poly"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for m in show:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        grid = np.array(rs[0]["grid"])
        reg = np.array([r["regret"] for r in rs], float)
        med = np.median(reg, axis=0)
        q1, q3 = np.percentile(reg, 25, axis=0), np.percentile(reg, 75, axis=0)
        ok = np.isfinite(med)
        line, = ax.plot(grid[ok], med[ok], label=m, lw=1.8, ls="--" if m.startswith("random") else "-")
        okb = np.isfinite(q3) & np.isfinite(q1)
        ax.fill_between(grid[okb], q1[okb], q3[okb], color=line.get_color(), alpha=0.12)
    ax.set_xlabel("epochs spent by the search")
    ax.set_ylabel("regret (mIoU, best config of its schedule − returned)")
    ax.set_title(f"Median regret over paired seeds (band: quartiles); budget {budget} epochs")
    ax.set_xlim(0, budget)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from hpo.replay import DEFAULT_TABLE

    p = argparse.ArgumentParser(prog="python -m benchmarks.search_efficiency", description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    p.add_argument("--seeds", type=int, default=50, help="paired seeds per method (default 50)")
    p.add_argument("--budget", type=int, help="epochs per search (default 64 full trainings)")
    p.add_argument("--methods", help="comma list of method numbers (1-based, default: all)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md + the plot")
    args = p.parse_args(argv)
    names = list(METHODS)
    methods = names if not args.methods else [names[int(i) - 1] for i in args.methods.split(",")]
    if RANDOM not in methods:
        methods.insert(0, RANDOM)
    _init(str(args.table))
    sources, tgt = _WORK["sources"], _WORK["targets"]
    max_t = next(iter(sources.values())).max_t
    budget = args.budget or 64 * max_t
    jobs = [(m, s, budget) for s in range(args.seeds) for m in methods]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers, initializer=_init, initargs=(str(args.table),)) as pool:
        runs = []
        for k, r in enumerate(pool.imap_unordered(run_one, jobs), 1):
            runs.append(r)
            if k % 50 == 0:
                print(f"[{time.perf_counter() - t0:5.0f} s] {k}/{len(jobs)} replays", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    table, info = summarize(runs)
    from benchmarks.curve_table import rank_table

    n_cfg = next(iter(sources.values())).curves.shape[0]
    verdict = []
    for m in [m for m in info if "TPE" in m]:
        if m in info and info[m]["ratio"]:
            r = info[m]["ratio"]
            base = info[m]["baseline"]
            ok = r[0] <= 0.5 and r[2] < 1.0 and info[m]["final_regret"] <= info[base]["final_regret"]
            verdict.append(f"{m}: {_f(r[0], 2)}{'' if math.isinf(r[0]) else 'x'} the median epochs of {base} [{_f(r[1], 2)}, {_f(r[2], 2)}], "
                           f"median final regret {info[m]['final_regret']:.2f} vs {info[base]['final_regret']:.2f} - "
                           f"goal {'met' if ok else 'missed'}")
    command = ("python -m benchmarks.search_efficiency " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    section = "\n".join([
        HEADING, "",
        f"{datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores). Command: `{command}`, "
        f"{wall:.0f} s for {len(runs)} replays. Table: `{args.table.relative_to(REPO) if args.table.is_relative_to(REPO) else args.table}` "
        f"({n_cfg} Sobol configs x 2 training seeds x 3 schedules). Budget {budget} epochs "
        f"({budget // max_t} full trainings of {max_t} epochs), 4 trials at a time, ASHA grace 1 / rf 3 unless "
        f"named; {args.seeds} paired seeds per method. Target and regret per LR schedule (a search is judged "
        f"against the configs of its own training recipe; the mIoU column compares recipes): top 2% of the "
        f"configs' qualities (mean final score over the 2 training seeds) = "
        + ", ".join(f"{k} {t:.2f} (best {b:.2f})" for k, (t, b) in tgt.items()) +
        ". Protocol: module docstring of `benchmarks/search_efficiency.py`.", "",
        table, "",
        f"![median regret vs epochs]({PLOT.relative_to(REPO / 'benchmarks')})", "",
        "Goal (ASHA + TPE <= 0.5x random's median epochs to the target, 95% interval below 1.0, final regret "
        "<= random's):", "",
        *[f"- {v}" for v in verdict], "",
        "What the rungs see (`python -m benchmarks.curve_table --report`): Spearman rank correlation across "
        "configs between the score at a rung and the final score of the same training seed (what ASHA sees), "
        "of the other seed (does it predict the config rather than its noise), and between the two seeds' "
        "scores at the rung.", "",
        rank_table(args.table),
    ])
    print(section)
    if args.write:
        plot(runs, PLOT, budget)
        write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
