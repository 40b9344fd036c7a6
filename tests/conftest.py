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


def pytest_collection_modifyitems(items):
    """A test that starts a real local Ray (the ray_local fixture, directly or through another
    fixture) is an end-to-end test: marked slow, so `-m "not slow"` (make mutation) leaves it out."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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


TOY_SEARCH = "toy"
TOY_PROMOTE_EPOCHS = 4


@pytest.fixture(scope="session")
def toy_search(ray_local, tiny_data, tmp_path_factory):
    """One finished toy search (tests/helpers.py write_search_space: TPE, 6 trials, ASHA, 3 epochs,
    deterministic training, a promote section) shared by the tests that only read it: the
    end-to-end checks in test_search and the promotion tests. Its stdout is kept in `.out`."""
    import contextlib
    import io
    from types import SimpleNamespace

    import yaml

    from helpers import write_search_space
    from hpo import search

    tmp = tmp_path_factory.mktemp("toy_search")
    cwd = os.getcwd()
    os.chdir(tmp)                      # MLflow artifacts (./mlruns) stay in the search's folder
    try:
        space = write_search_space(tmp, tiny_data, TOY_SEARCH)
        raw = yaml.safe_load(space.read_text())
        raw["base"]["runtime"]["deterministic"] = True       # hpo.train must reproduce a trial's score
        raw["promote"] = {"budget": {"epochs": TOY_PROMOTE_EPOCHS},
                          "eval": {"tta": True, "scales": [0.75, 1.0], "flip": True}}
        space.write_text(yaml.safe_dump(raw, sort_keys=False))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = search.main([str(space), "--no-report"])
    finally:
        os.chdir(cwd)
    assert rc == 0, out.getvalue()[-3000:]
    return SimpleNamespace(tmp=tmp, name=TOY_SEARCH, space=space, out=out.getvalue(),
                           uri=f"sqlite:///{tmp}/mlflow.db", storage=tmp / "ray_results")
