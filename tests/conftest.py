"""Shared fixtures: a real local Ray (2 CPUs) and a tiny generated synthetic dataset."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = {"train": 24, "val": 6, "size": [64, 128], "seed": 0}


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic Cityscapes-layout tree shared by the session's tests."""
    from datasets.synthetic import ensure

    root = tmp_path_factory.mktemp("data") / "synthetic"
    ensure(str(root), **TINY_DATA)
    return root


def tiny_run_config(data_root: Path, **overrides) -> dict:
    """The toy msglore config shrunk to seconds per epoch on 64x128 synthetic images."""
    from benchmarks.toy_task import toy_config
    from hpo.config import set_key

    cfg = toy_config(data_root)
    for key, value in overrides.items():
        set_key(cfg, key, value)
    return cfg


POLL_S = 0.5   # how often wait_for looks again


def wait_for(condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None, fail: bool = True):
    """Poll `condition` until it returns something truthy, with a deadline. Fails naming `what`
    (and the log tail) when it runs out or `proc` exits; with fail=False returns the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        tail = log.read_text()[-3000:] if log and log.is_file() else ""
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{tail}")
        if time.monotonic() > deadline:
            if fail:
                pytest.fail(f"timed out waiting for {what}\n{tail}")
            return value
        time.sleep(POLL_S)
