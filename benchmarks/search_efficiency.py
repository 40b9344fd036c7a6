"""Search efficiency on every curve table: random search vs ASHA vs calibrated early stopping.

    python -m benchmarks.search_efficiency                        # every table in benchmarks/tables/, 50 seeds
    python -m benchmarks.search_efficiency --table my.npz --seeds 20
    python -m benchmarks.search_efficiency --write                 # also replace the RESULTS.md section + plots

Every search is `hpo.replay` over a table of learning curves (format: docs/replay.md): the real
HonestOptunaSearch, Optuna sampler and scheduler (hpo.tuning.factory.make_scheduler: Ray's ASHAScheduler
or CalibratedASHA), in simulated time. The methods differ only in sampler and scheduler; everything
else is what `hpo.replay --table FILE` replays by default (the demo space's settings:
`hpo.simulation.simulator.table_settings`), so the row "calibrated ASHA + TPE" is the shipped default search.

Protocol (fixed before looking at results):
- Budget: `--budget` full trainings per search (default 64, in epochs; the regret at half of it, 32
  full trainings, is a column too); every validation costs the epochs since the previous one. A
  search ends when the budget is spent.
- Seeds are paired: seed k drives the sampler and the training-seed draws of every method.
- What a search returns: its completed trial with the best *observed* final score (the leaderboard's
  pick); its quality: that config's final score averaged over the table's training seeds.
- Target: the top 2% (98th percentile) of the configs' qualities. "Epochs to target": epochs spent
  when the returned config's quality first reaches it; a search that never does is censored
  (infinite; medians can be censored).
- Regret: best quality in the table minus the returned config's quality, at every epoch.
- Statistics: medians over seeds with bootstrap 95% intervals (2000 resamples, order-statistic
  bounds so censored runs stay infinite); ratios of medians against random full-budget search over
  paired seeds (random's censored runs counted as the budget, so a ratio is an upper bound when
  random search often misses the target); the paired difference of final regrets (method - random)
  with its bootstrap interval.
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
TABLES = REPO / "benchmarks" / "tables"
HEADING = "## Search efficiency on every curve table (replay, paired seeds)"
RANDOM = "random, full budget"
SHIPPED = "calibrated ASHA + TPE (shipped default)"

# label -> ReplaySettings overrides of the shipped default's settings
METHODS = {
    RANDOM: dict(sampler="random", scheduler="none"),
    "TPE, full budget": dict(sampler="tpe", scheduler="none"),
    "ASHA + random": dict(sampler="random", scheduler="asha", trust="raw"),
    "ASHA + TPE": dict(sampler="tpe", scheduler="asha", trust="raw"),
    "calibrated ASHA + random": dict(sampler="random", scheduler="asha", trust="calibrated"),
    SHIPPED: dict(sampler="tpe", scheduler="asha", trust="calibrated"),
}

_WORK: dict = {}


def _init(table: str) -> None:
    import warnings

    from hpo.simulation.curves import from_table

    warnings.filterwarnings("ignore")
    src = from_table(Path(table))
    q = src.quality()
    q = q[np.isfinite(q)]
    _WORK.update(source=src, target=float(np.quantile(q, 0.98)), best=float(q.max()))


def run_one(job: tuple[str, str, int, int]) -> dict:
    """One (method, seed) replay: epochs to target, regret curve on a grid, final regret."""
    from hpo.simulation.simulator import replay, table_settings

    table, method, seed, budget = job
    source = _WORK["source"]
    settings = table_settings(source, REPO / "search_spaces" / "demo.yaml")
    for k, v in {**METHODS[method], "seed": seed, "budget_epochs": budget, "num_samples": None}.items():
        setattr(settings, k, v)
    t0 = time.perf_counter()
    res = replay(source, settings)
    grid = np.linspace(0, budget, 65).astype(int)
    hit = res.epochs_to(_WORK["target"])
    final_regret = res.regret_at(budget)
    modes = {}
    for rung, st in getattr(res.scheduler, "rungs", {}).items():
        modes[rung] = (st.mode, st.cut, st.kept)
    return {"table": table, "method": method, "seed": seed, "epochs_to_target": hit if hit is not None else math.inf,
            "regret": [res.regret_at(int(e)) for e in grid], "grid": grid.tolist(),
            "final_regret": final_regret, "trials": len(res.trials), "modes": modes,
            "completed": sum(t.status == "completed" for t in res.trials), "seconds": time.perf_counter() - t0}


def bootstrap(stat, *arrays: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """stat(*arrays) with its bootstrap 95% interval over paired resamples (inf allowed)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arrays[0]), (n, len(arrays[0])))
    with np.errstate(invalid="ignore", divide="ignore"):
        point = stat(*arrays)
        boots = np.array([stat(*(a[i] for a in arrays)) for i in idx])
    boots = np.where(np.isnan(boots), np.inf, boots)          # inf / inf, inf - inf: censored both ways
    point = point if point == point else math.inf
    # lower/higher, not interpolated: censored runs are inf, and inf - inf would make a bound NaN
    return (float(point), float(np.percentile(boots, 2.5, method="lower")),
            float(np.percentile(boots, 97.5, method="higher")))


def _f(v: float, d: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "censored" if math.isinf(v) else f"{v:.{d}f}"


def summarize(runs: list[dict]) -> tuple[str, dict]:
    by = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in METHODS}
    by = {m: rs for m, rs in by.items() if rs}
    rand_e = np.array([r["epochs_to_target"] for r in by[RANDOM]], float)
    # Random search censored at the budget needed more epochs than that: counting them as the budget
    # makes the ratio to random an upper bound (conservative for the other methods).
    budget = by[RANDOM][0]["grid"][-1]
    rand_floor = np.minimum(rand_e, budget)
    rand_r = np.array([r["final_regret"] for r in by[RANDOM]], float)
    lines = ["| method | median epochs to target [95% CI] | × random [95% CI] | censored | "
             "median final regret [95% CI] | final regret − random's, median of pairs [95% CI] | "
             "mean final regret | median regret at half the budget | trials per search |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    info = {}
    for m, rs in by.items():
        e = np.array([r["epochs_to_target"] for r in rs], float)
        reg = np.array([r["final_regret"] for r in rs], float)
        med = bootstrap(np.median, e)
        rmed = bootstrap(np.median, reg)
        ratio = bootstrap(lambda a, b: np.median(a) / np.median(b), e, rand_floor) if m != RANDOM else None
        diff = bootstrap(lambda a, b: np.median(a - b), reg, rand_r) if m != RANDOM else None
        info[m] = {"median": med[0], "ratio": ratio, "regret": rmed, "diff": diff,
                   "censored": int(np.isinf(e).sum()), "n": len(rs)}
        lines.append(f"| {m} | {_f(med[0])} [{_f(med[1])}, {_f(med[2])}] | "
                     + (f"{_f(ratio[0], 2)} [{_f(ratio[1], 2)}, {_f(ratio[2], 2)}]" if ratio else "baseline")
                     + f" | {int(np.isinf(e).sum())}/{len(rs)} | {rmed[0]:.2f} [{rmed[1]:.2f}, {rmed[2]:.2f}] | "
                     + (f"{diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}]" if diff else "baseline")
                     + f" | {np.mean(reg[np.isfinite(reg)]) if np.isfinite(reg).any() else math.nan:.2f} | "
                     f"{_f(float(np.median([r['regret'][len(r['grid']) // 2] for r in rs])), 2)} | "
                     f"{np.mean([r['trials'] for r in rs]):.0f} |")
    return "\n".join(lines), info


def verdict(info: dict) -> str:
    m = info.get(SHIPPED)
    if not m:
        return "shipped default not run"
    r, d = m["ratio"], m["diff"]
    regret_ok = d[1] <= 0 <= d[2] or d[2] < 0
    speed_ok = r[0] <= 0.5 and r[2] < 1.0
    return (f"shipped default: {_f(r[0], 2)}{'' if math.isinf(r[0]) else 'x'} random's median epochs to the target "
            f"[{_f(r[1], 2)}, {_f(r[2], 2)}] (goal <= 0.5x, interval below 1: {'met' if speed_ok else 'missed'}); "
            f"final regret minus random's {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] (goal: interval includes or is "
            f"below 0: {'met' if regret_ok else 'missed'})")


def mode_summary(runs: list[dict], method: str) -> str:
    """How often the calibrated scheduler ended each rung in each mode, and its cuts."""
    rs = [r for r in runs if r["method"] == method and r["modes"]]
    if not rs:
        return ""
    parts = []
    for rung in sorted({k for r in rs for k in r["modes"]}):
        got = [r["modes"][rung] for r in rs if rung in r["modes"]]
        counts = {mo: sum(g[0] == mo for g in got) for mo in ("pass", "raw", "predicted")}
        cut = sum(g[1] for g in got) / len(got)
        kept = sum(g[2] for g in got) / len(got)
        parts.append(f"validation {rung}: last mode pass/raw/predicted in {counts['pass']}/{counts['raw']}/"
                     f"{counts['predicted']} searches, {cut:.1f} cut and {kept:.1f} went on per search")
    return f"{method}: " + "; ".join(parts)


def plot(runs: list[dict], path: Path, budget: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for m in METHODS:
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
        ax.fill_between(grid[okb], q1[okb], q3[okb], color=line.get_color(), alpha=0.10)
    ax.set_xlabel("epochs spent by the search")
    ax.set_ylabel("regret (best config − returned)")
    ax.set_title(f"{title}: median regret over paired seeds (band: quartiles)", fontsize=9)
    ax.set_xlim(0, budget)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rank_summary(table: Path) -> str:
    """Spearman(validation score, final score of the same training seed) at a few validations."""
    from hpo.tuning.calibrated import spearman
    from hpo.simulation.curves import from_table

    src = from_table(table)
    picks = sorted({1, 2, 3, max(1, src.max_t // 3), max(1, 2 * src.max_t // 3)} - {src.max_t})
    cells = []
    for v in picks:
        rhos = []
        for k in range(src.curves.shape[1]):
            a, b = src.curves[:, k, v - 1], src.finals[:, k]
            ok = np.isfinite(a) & np.isfinite(b)
            rhos.append(spearman(a[ok], b[ok]))
        cells.append(f"epoch {src.epochs[v - 1]}: {np.nanmean(rhos):.2f}")
    q = src.quality()
    spread = np.nanmedian(np.abs(src.finals[:, 0] - src.finals[:, 1])) if src.finals.shape[1] > 1 else math.nan
    return (f"rank correlation with the final score (same seed): {', '.join(cells)}; final seed-to-seed "
            f"spread {spread:.2f}; qualities: best {np.nanmax(q):.2f}, top 2% {np.nanquantile(q, 0.98):.2f}, "
            f"median {np.nanmedian(q):.2f}")


def run_table(table: Path, seeds: int, budget_trainings: int, workers: int, methods: list[str]) -> tuple[list, int]:
    from hpo.simulation.curves import from_table

    budget = budget_trainings * int(from_table(table).epochs[-1])
    jobs = [(str(table), m, s, budget) for s in range(seeds) for m in methods]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(str(table),)) as pool:
        runs = []
        for k, r in enumerate(pool.imap_unordered(run_one, jobs), 1):
            runs.append(r)
            if k % 50 == 0:
                print(f"[{time.perf_counter() - t0:5.0f} s] {table.name}: {k}/{len(jobs)} replays",
                      file=sys.stderr, flush=True)
    return runs, budget


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_efficiency", description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, action="append", help="a curve table (repeatable; default: every "
                                                                 "table in benchmarks/tables/)")
    p.add_argument("--seeds", type=int, default=50, help="paired seeds per method (default 50)")
    p.add_argument("--budget", type=int, default=64, help="full trainings per search (default 64)")
    p.add_argument("--methods", help="comma list of method numbers (1-based, default: all)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md + the plots")
    args = p.parse_args(argv)
    names = list(METHODS)
    methods = names if not args.methods else [names[int(i) - 1] for i in args.methods.split(",")]
    if RANDOM not in methods:
        methods.insert(0, RANDOM)
    tables = args.table or sorted(TABLES.glob("*.npz"))
    command = ("python -m benchmarks.search_efficiency " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    parts = [HEADING, "",
             f"{datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores). Command: `{command}`. "
             f"Budget {args.budget} full trainings per search, {args.seeds} paired seeds per method; settings "
             "otherwise the demo space's (what `python -m hpo.replay --table FILE` replays). Protocol: module "
             "docstring of `benchmarks/search_efficiency.py`.", ""]
    printed = 0
    for table in tables:
        t0 = time.perf_counter()
        runs, budget = run_table(table, args.seeds, args.budget, args.workers, methods)
        text, info = summarize(runs)
        img = REPO / "benchmarks" / "img" / f"regret_{table.stem}.png"
        table = table.resolve()
        name = table.relative_to(REPO) if table.is_relative_to(REPO) else table
        parts += [f"### `{name}`", "",
                  f"{rank_summary(table)}. {len(runs)} replays in {time.perf_counter() - t0:.0f} s; budget "
                  f"{budget} epochs.", "", text, "", f"- {verdict(info)}",
                  *[f"- {line}" for line in (mode_summary(runs, SHIPPED), mode_summary(runs, "calibrated ASHA + random"))
                    if line], ""]
        if args.write:
            plot(runs, img, budget, table.stem)
            parts += [f"![median regret vs epochs, {table.stem}]({img.relative_to(REPO / 'benchmarks')})", ""]
        print("\n".join(parts[printed:]), flush=True)       # each table as soon as it is done
        printed = len(parts)
    section = "\n".join(parts)
    if args.write:
        write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
