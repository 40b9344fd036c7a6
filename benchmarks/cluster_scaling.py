"""Scaling of a search over Ray nodes: the same fixed work on a 1-node and a 2-node cluster.

    python -m benchmarks.cluster_scaling                 # 8 trials x 3 epochs x 6 steps, 1 CPU per node
    python -m benchmarks.cluster_scaling --trials 12 --epochs 4 --steps 10

Both clusters run on this host over loopback (`ray start --head` + `ray start --address`, one
CPU each, token authentication on); the driver is `python -m hpo.search --address ...`. The work
is fixed: FIFO scheduler (no early stopping), `--trials` trials of the same budget, as many at a
time as the cluster has CPUs, the same seeded sampler. The time measured is the search's own
wall time from its leaderboard line (`tuner.fit`, excluding driver start-up and data checks);
the ratio is 1-node time / 2-node time (2.0 = perfect scaling). Two nodes on one machine share
its cores, memory bandwidth and whatever else runs there: on a busy 2-core machine expect
well under 2. The table goes to benchmarks/RESULTS.md under its own heading (replaced on rerun).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchmarks.results import write_section
from benchmarks.toy_task import toy_config

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Cluster scaling (hpo.search on 1 vs 2 Ray nodes)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_line(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no '{text}'\n{log.read_text()[-2000:]}")
        time.sleep(0.5)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def run_on_cluster(nodes: int, space: Path, work: Path) -> float:
    """Start a `nodes`-node cluster, run the search on it, stop it; the search's wall time in s."""
    port, tmp = _free_port(), tempfile.mkdtemp(prefix="ctxray", dir="/tmp")
    token = work / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    ray = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--num-cpus=1",
           "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        for i in range(nodes):
            log = work / f"node{nodes}_{i}.log"
            args = (["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}"] if i == 0
                    else [f"--address=127.0.0.1:{port}"])
            procs.append(subprocess.Popen([*ray, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True))
            _wait_line(log, "Ray runtime started", procs[-1])
        log = work / f"search{nodes}.log"
        name = f"scaling{nodes}"
        result = subprocess.run([sys.executable, "-m", "hpo.search", str(space), "--no-report", "--name", name,
                                 "--address", f"127.0.0.1:{port}"], stdout=open(log, "w"),
                                stderr=subprocess.STDOUT, env=env, cwd=work, timeout=3600)
        text = log.read_text()
        match = re.search(r"leaderboard \((\d+) trials, (\d+) s\)", text)
        if result.returncode != 0 or not match:
            raise RuntimeError(f"search on {nodes} node(s) failed:\n{text[-3000:]}")
        return float(match.group(2))
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def write_space(work: Path, data_root: Path, trials: int, epochs: int, steps: int, concurrent: int) -> Path:
    base = toy_config(data_root, epochs=epochs, iters_per_epoch=steps, overlays=1)
    space = {
        "experiment": {"name": "scaling", "storage_path": str(work / "ray_results"),
                       "tracking_uri": f"sqlite:///{work}/mlflow.db"},
        "base": base,
        "space": {"model.selection.n3": {"type": "int", "low": 2, "high": 16},
                  "optim.lr": {"type": "float", "low": 1e-3, "high": 0.05, "log": True}},
        "search": {"sampler": "random", "seed": 0, "num_samples": trials, "max_concurrent": concurrent},
        "scheduler": {"name": "none", "max_t": epochs},
        "resources": {"cpu": 1, "gpu": 0},
    }
    path = work / f"space{concurrent}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="training steps per epoch")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)

    from datasets.synthetic import ensure

    work = Path(tempfile.mkdtemp(prefix="ctxscale"))
    try:
        data = work / "synthetic"
        ensure(str(data), train=24, val=6, size=[64, 128], seed=0)
        times = {n: run_on_cluster(n, write_space(work, data, args.trials, args.epochs, args.steps, n), work)
                 for n in (1, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    table = "\n".join([
        HEADING, "",
        f"Fixed work: {args.trials} trials x {args.epochs} epochs x {args.steps} steps (toy msglore, 64x64 crops, "
        f"batch 4), FIFO, 1 CPU per trial and per node, both clusters on one host ({platform.node()}, "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end). Time = the search's `tuner.fit` wall time.",
        "", "| nodes | trials at a time | search wall time (s) | speed-up vs 1 node |", "|---|---|---|---|",
        f"| 1 | 1 | {times[1]:.0f} | 1.00 |",
        f"| 2 | 2 | {times[2]:.0f} | {times[1] / times[2]:.2f} |", "",
        f"`python -m benchmarks.cluster_scaling --trials {args.trials} --epochs {args.epochs} --steps {args.steps}`",
    ])
    print(table)
    if not args.no_write:
        write_section(HEADING, table)


if __name__ == "__main__":
    main()
