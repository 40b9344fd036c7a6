"""Does the replay agree with reality? Small real searches, then each replayed from its own curves.

    python -m benchmarks.replay_check            # 3 searches on one local Ray, 2 trials at a time (minutes)
    python -m benchmarks.replay_check --write    # also replace this section of benchmarks/RESULTS.md

Each search is the unmodified `hpo.search` (real Ray Tune, HonestOptunaSearch, ASHAScheduler,
MLflow) on a tiny synthetic set; `hpo.replay SEARCH` then re-runs the same settings in simulated
time with result durations taken from Ray's result.json. Reported per search: how many trials got
the same config (suggestion order) and the same ASHA outcome (status + validations run). With 2
trials at a time the order of arrivals depends on real timing jitter that the replay models only
through the logged durations, so a few decisions may flip; with one at a time (tests/test_replay.py)
they all must agree.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.results import publish
from benchmarks.toy_task import toy_config

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Replay vs reality (small real searches replayed from their own curves)"
SEARCHES = [  # (name, sampler, seed, grace, rf, trials)
    ("rc-random-s0", "random", 0, 1, 2, 10),
    ("rc-tpe-s1", "tpe", 1, 1, 2, 10),
    ("rc-random-s2", "random", 2, 1, 3, 10),
]
MAX_T = 4


def space_file(work: Path, data_root: Path, name: str, sampler: str, seed: int, grace: int, rf: int,
               trials: int) -> Path:
    base = toy_config(data_root, epochs=MAX_T, iters_per_epoch=4, val_batch_size=8, overlays=0)
    space = {"experiment": {"name": name, "storage_path": str(work / "ray_results"),
                            "tracking_uri": f"sqlite:///{work}/mlflow.db"},
             "base": base,
             "space": {"model.selection.n3": {"type": "int", "low": 2, "high": 16},
                       "loss.aux_weights.selection": {"type": "float", "low": 0.1, "high": 1.5},
                       "optim.lr": {"type": "float", "low": 1e-3, "high": 0.2, "log": True}},
             "search": {"sampler": sampler, "seed": seed, "num_samples": trials, "max_concurrent": 2},
             "scheduler": {"name": "asha", "max_t": MAX_T, "grace_period": grace, "reduction_factor": rf},
             "resources": {"cpu": 1, "gpu": 0}, "failure": {"max_retries": 0}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replay_check", description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    import ray

    from datasets.synthetic import ensure
    from hpo.simulation.curves import from_search
    from hpo.simulation.simulator import ReplaySettings, replay
    from hpo.results.handle import find_search
    from hpo.execution.runner import run_search
    from hpo.tuning.space import load_space

    rows = ["| search | sampler, ASHA | trials | same config | same ASHA outcome | real: completed / stopped | "
            "replay: completed / stopped | wall (s) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ctxtune-replaycheck-") as tmp:
        work = Path(tmp)
        ensure(str(work / "data"), train=24, val=8, size=[64, 128], seed=0)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        cwd = os.getcwd()
        os.chdir(work)
        try:
            for name, sampler, seed, grace, rf, trials in SEARCHES:
                path = space_file(work, work / "data", name, sampler, seed, grace, rf, trials)
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    assert run_search(load_space(path), space_path=str(path), report=False) == 0
                wall = time.perf_counter() - t0
                found = find_search(name, str(work / "ray_results"))
                source = from_search(found)
                res = replay(source, ReplaySettings(sampler=sampler, seed=seed, grace_period=grace,
                                                    reduction_factor=rf, max_concurrent=2, num_samples=trials))
                same_cfg = sum(source.params[r.config] == t.params for r, t in zip(res.trials, found.trials))
                same_out = sum((r.status, r.epochs) == (t.status, t.last_step)
                               for r, t in zip(res.trials, found.trials))
                count = lambda xs: f"{sum(x == 'completed' for x in xs)} / {sum(x == 'early_stopped' for x in xs)}"  # noqa: E731
                rows.append(f"| {name} | {sampler}, grace {grace} rf {rf} | {trials} | {same_cfg}/{trials} | "
                            f"{same_out}/{trials} | {count([t.status for t in found.trials])} | "
                            f"{count([t.status for t in res.trials])} | {wall:.0f} |")
                print(rows[-1], file=sys.stderr, flush=True)
        finally:
            os.chdir(cwd)
            ray.shutdown()
    section = "\n".join([
        HEADING, "",
        f"{datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores), 2 trials at a time. Command: "
        f"`python -m benchmarks.replay_check`, {time.perf_counter() - t_all:.0f} s in all. Tiny task (24 train / 8 val "
        f"synthetic images, 4 SGD steps per epoch, {MAX_T} epochs); the replay takes each result's duration "
        "from Ray's result.json.", "", *rows])
    return publish(HEADING, section, args.write)


if __name__ == "__main__":
    sys.exit(main())
