"""A search on a real two-node Ray cluster logging to a real MLflow tracking server.

Everything runs as real processes over loopback: `ray start --head` + `ray start --address` (one
CPU each, token authentication on, as Ray >= 2.60 does by default), `mlflow server` with a
PostgreSQL backend where PostgreSQL and psycopg2 are present (the setup a team would use; else a
SQLite backend) and a local artifact store, and `python -m hpo.search --address ...
--tracking-uri http://...` as the driver.

The helpers (free ports, process groups, the cluster and server, the search's space file) live in
tests/helpers.py, shared with tests/test_faults.py.
"""

from __future__ import annotations

import contextlib

import pytest

from helpers import (EPOCHS, MlflowServer, RayCluster, assert_complete_history, postgres_database, postgres_missing,
                     search_cmd, search_env, spawn, trial_runs, write_space)

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    """The setup a team would use: an MLflow server on PostgreSQL where PostgreSQL and psycopg2 are
    here (else on SQLite; test_faults' outage test always runs one on SQLite). Spawned, not waited
    for: a test starts its other processes meanwhile, then calls ready()."""
    with contextlib.ExitStack() as stack:
        backend = None if postgres_missing() else stack.enter_context(postgres_database())
        server = MlflowServer(tmp_path, backend).spawn()
        stack.callback(server.stop)
        yield server


# --- tests ----------------------------------------------------------------------------------
def test_search_on_two_node_cluster_logs_to_tracking_server(tiny_data, tmp_path, mlflow_server):
    with RayCluster(tmp_path, nodes=2) as cluster:
        mlflow_server.ready()
        space = write_space(tmp_path, tiny_data, "cluster", mlflow_server.uri)
        # Without the cluster's token a driver is refused with one line that says what to set.
        # (HOME elsewhere: no ~/.ray/auth_token of this machine's own local Ray to fall back on.)
        no_token = {k: v for k, v in search_env().items() if not k.startswith("RAY_AUTH")}
        refused_log = tmp_path / "refused.log"
        refused = spawn(search_cmd(space, "--address", cluster.address, "--name", "refused"), refused_log,
                        env={**no_token, "HOME": str(tmp_path)}, cwd=tmp_path)
        log = tmp_path / "search.log"
        driver = spawn(search_cmd(space, "--address", cluster.address, "--tracking-uri", mlflow_server.uri),
                       log, env=search_env({k: v for k, v in cluster.env.items() if k.startswith("RAY_AUTH")}),
                       cwd=tmp_path)
        assert refused.wait(timeout=300) == 2, refused_log.read_text()[-3000:]
        last = refused_log.read_text().strip().splitlines()[-1]
        assert last.startswith("error: --address") and "RAY_AUTH_TOKEN" in last, refused_log.read_text()[-3000:]
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]

    client, parent, runs = trial_runs(mlflow_server.uri, "cluster")
    assert parent.info.status == "FINISHED"
    assert mlflow_server.backend_uri.startswith("postgresql") == (postgres_missing() is None), postgres_missing()
    assert len(runs) == 4 and len({r.data.tags["ray_trial_id"] for r in runs}) == 4
    # One CPU per node and two trials at a time: both nodes trained, each run names its node.
    nodes = [r.data.tags["ray_node_id"] for r in runs]
    assert len(set(nodes)) == 2, nodes
    for run in runs:
        assert run.data.tags["status"] == "completed"
        assert_complete_history(client, run, EPOCHS)
        assert "optim.lr" in run.data.params
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "overlays"} <= artifacts, artifacts
        pictures = client.list_artifacts(run.info.run_id, "overlays")
        assert pictures and all(a.file_size > 0 for a in pictures)
    # Artifacts went through the server into its artifact store, not to the driver's disk.
    assert list(mlflow_server.artifacts.rglob("config.yaml"))
    assert {"space.yaml", "leaderboard.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    # Ray's own results agree with MLflow about where each trial ran.
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(tmp_path / "ray_results" / "cluster"))
    by_trial = {t.trial_id: t.last_result["node_id"] for t in analysis.trials}
    assert by_trial == {r.data.tags["ray_trial_id"]: r.data.tags["ray_node_id"] for r in runs}
    print(f"\ntrials per node: { {n[:8]: nodes.count(n) for n in set(nodes)} }")
