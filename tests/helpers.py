"""Helpers shared by the end-to-end test files (searches, clusters, faults, promotion, stopping).

Tests import them from here (or from conftest.py), never from another test file: a test file can
then move or split without breaking its neighbours.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import yaml

from conftest import REPO, tiny_run_config, wait_for

EPOCHS = 3            # the toy searches' budget (validations)
SEARCH_SAMPLES = 6    # write_search_space's trials


# --- processes ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """A process in its own process group, so stopping it also stops what it started."""
    out = open(log, "ab")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def stop(*procs: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
    """Signal each process group (all at once: shutdowns overlap), SIGKILL what outlives the wait."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class MlflowServer:
    """`mlflow server` on 127.0.0.1; `stop()` then `start()` again keeps port and stores."""

    def __init__(self, tmp: Path, backend_uri: str | None = None):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_uri = backend_uri or f"sqlite:///{tmp}/mlflow_server.db"
        self.artifacts = tmp / "mlflow_artifacts"
        self.log = tmp / "mlflow_server.log"
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> "MlflowServer":
        self.proc = spawn([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                           "--workers", "1", "--backend-store-uri", self.backend_uri,
                           "--artifacts-destination", str(self.artifacts)], self.log)
        return self

    def ready(self, timeout_s: float = 180) -> "MlflowServer":
        wait_for(lambda: http_ok(f"{self.uri}/health"), timeout_s, "mlflow server", self.proc, self.log)
        return self

    def start(self) -> "MlflowServer":
        return self.spawn().ready()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig=sig)
        self.proc = None


class RayCluster:
    """A head and `nodes - 1` workers via `ray start --block` (SIGTERM to each stops its node),
    token authentication on with a token of its own; `env` is what a driver needs to join."""

    def __init__(self, tmp: Path, nodes: int = 2, cpus_per_node: int = 1):
        self.tmp, self.nodes, self.cpus = tmp, nodes, cpus_per_node
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        token = tmp / "ray_auth_token"
        token.write_text(secrets.token_hex(32))
        # Unix socket paths are limited to 107 bytes: a short temp dir of its own, removed after.
        self.temp_dir = tempfile.mkdtemp(prefix="ctxray", dir="/tmp")
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "RayCluster":
        ray = [str(Path(sys.executable).with_name("ray")), "start", "--block", f"--num-cpus={self.cpus}",
               "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        log = self.tmp / "ray_head.log"
        self.procs.append(spawn([*ray, "--head", f"--port={self.port}", "--include-dashboard=false",
                                 f"--temp-dir={self.temp_dir}"], log, env=self.env))
        wait_for(lambda: "Ray runtime started" in log.read_text(), 180, "ray head", self.procs[0], log)
        for i in range(1, self.nodes):   # one at a time: two raylets starting at once crowd 2 cores
            log = self.tmp / f"ray_node{i}.log"
            self.procs.append(spawn([*ray, f"--address={self.address}"], log, env=self.env))
            # printed once the node's raylet has registered with the head
            wait_for(lambda: "Ray runtime started" in log.read_text(), 180, f"ray node {i}", self.procs[-1], log)
        return self

    def __exit__(self, *exc) -> None:
        stop(*self.procs)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_database():
    """A throwaway PostgreSQL server with a database `mlflow`; yields its SQLAlchemy URI."""
    pg_dir = Path(tempfile.mkdtemp(prefix="ctxpg", dir="/tmp"))   # short: holds the unix socket
    port = free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(pg_dir, "postgres")
    subprocess.run([*as_user, "initdb", "-D", str(pg_dir / "data"), "-U", "mlflow", "--auth=trust"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, "pg_ctl", "-D", str(pg_dir / "data"), "-l", str(pg_dir / "pg.log"), "-w", "start",
                    "-o", f"-p {port} -k {pg_dir} -h 127.0.0.1"], check=True, capture_output=True, timeout=120)
    try:
        subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, "pg_ctl", "-D", str(pg_dir / "data"), "-m", "fast", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(pg_dir, ignore_errors=True)


def postgres_missing() -> str | None:
    """Why a PostgreSQL-backed MLflow server cannot run here (None: it can)."""
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        return "PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 not installed (MLflow's PostgreSQL driver; a test extra: psycopg2-binary)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root and no runuser to start PostgreSQL as another user"
    return None


# --- a search -------------------------------------------------------------------------------
def write_space(tmp_path: Path, data_root: Path, name: str, tracking_uri: str | None = None, *,
                num_samples: int = 4, max_concurrent: int = 2, scheduler: str = "none", epochs: int = EPOCHS,
                iters_per_epoch: int = 3, points: list[dict] | None = None, max_retries: int = 0,
                lr_high: float = 0.1) -> Path:
    base = tiny_run_config(data_root)
    base["budget"] = {"epochs": epochs, "iters_per_epoch": iters_per_epoch, "val_every": 1}
    space = {
        "experiment": {"name": name, "storage_path": str(tmp_path / "ray_results"),
                       "tracking_uri": tracking_uri or f"sqlite:///{tmp_path}/mlflow.db"},
        "base": base,
        "space": {"model.selection.n3": {"type": "int", "low": 2, "high": 16},
                  "optim.lr": {"type": "float", "low": 1e-3, "high": lr_high, "log": True}},
        "search": {"sampler": "tpe", "seed": 1, "num_samples": num_samples, "max_concurrent": max_concurrent,
                   "points_to_evaluate": points or []},
        "scheduler": ({"name": "asha", "max_t": epochs, "grace_period": 1, "reduction_factor": 3, "trust": "raw"}
                      if scheduler == "asha" else {"name": "none", "max_t": epochs}),
        "resources": {"cpu": 1, "gpu": 0},
        "failure": {"max_retries": max_retries},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def search_cmd(space: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hpo.search", str(space), "--no-report", *extra]


def search_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **(extra or {})}
    return env


def trial_runs(uri: str, name: str):
    """(client, parent run, nested trial runs) of the search `name`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client, None, []
    parents = client.search_runs([exp.experiment_id], f"tags.`ctxtune.search` = '{name}'")
    if not parents:
        return client, None, []
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'",
                                  max_results=1000)
    return client, parents[0], children


def assert_complete_history(client, run, epochs: int | None = None) -> list[int]:
    """Every epoch logged once: steps 1..epochs_run, no gap, no duplicate, loss beside each."""
    done = int(run.data.tags["epochs_run"])
    if epochs is not None:
        assert done == epochs, run.data.tags
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
    assert steps == list(range(1, done + 1)), (run.data.tags["ray_trial_id"], steps)
    loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert loss_steps == steps, (run.data.tags["ray_trial_id"], loss_steps)
    return steps


# --- the end-to-end search of test_search / test_promote ------------------------------------
def write_search_space(tmp_path: Path, data_root: Path, name: str, **search_over) -> Path:
    space = {
        "experiment": {"name": name, "storage_path": str(tmp_path / "ray_results"),
                       "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "base": tiny_run_config(data_root),
        "space": {
            "model.selection.n3": {"type": "int", "low": 2, "high": 16},
            "model.selection.n5": {"type": "int", "low": 4, "high": 64},
            "loss.aux_weights.selection": {"type": "float", "low": 0.1, "high": 1.5},
            "optim.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        },
        "search": {"sampler": "tpe", "seed": 1, "num_samples": SEARCH_SAMPLES, "max_concurrent": 2,
                   "points_to_evaluate": [{"model.selection.n3": 11, "model.selection.n5": 32,
                                           "loss.aux_weights.selection": 0.7, "optim.lr": 0.02}],
                   **search_over},
        "scheduler": {"name": "asha", "max_t": EPOCHS, "grace_period": 1, "reduction_factor": 3, "trust": "raw"},
        "resources": {"cpu": 1, "gpu": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def child_runs(tmp_path: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    parents = client.search_runs([exp.experiment_id], f"tags.`ctxtune.search` = '{name}'")
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=1000)
    return client, exp, parent, children


def child_pids() -> set[int]:
    """Live processes whose parent is this one (e.g. a DataLoader's worker processes)."""
    me, pids = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":      # fields: state, ppid, ...
            pids.add(int(stat.parent.name))
    return pids


# --- independent computations the tests compare the code with -------------------------------------
def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given their average rank (written out, not scipy)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def hand_spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho as Pearson's correlation of the ranks."""
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    dx, dy = [v - mx for v in rx], [v - my for v in ry]
    return sum(a * b for a, b in zip(dx, dy)) / (sum(a * a for a in dx) * sum(b * b for b in dy)) ** 0.5


@contextlib.contextmanager
def torch_threads(n: int):
    """PyTorch's intra-op threads set to `n` inside the block, restored after (for whatever runs next)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
