"""MLflow plumbing shared by hpo.search, hpo.train, hpo.promote and hpo.report.

Kept free of Ray and Optuna imports so `hpo.train` starts quickly in a plain process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# MLflow 3.17's UI opens an experiment in its GenAI view unless it carries this tag.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def resolve_tracking_uri(uri: str | None) -> str:
    """Explicit URI, else MLflow's own default (sqlite mlflow.db in the working directory), made
    absolute so Ray workers, resumed searches and the printed `mlflow ui` hint all agree."""
    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def fail_fast_http(retries: int = 1, timeout_s: int = 10) -> None:
    """A down tracking server should cost seconds, not MLflow's default minutes per call (7 retries,
    backoff factor 2, 120 s timeout), which would block a driver loop. Users' own settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def get_or_create_experiment(client, name: str) -> str:
    """The experiment's id, created (or re-tagged) so the UI opens its runs table."""
    key, value = EXPERIMENT_KIND_TAG
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={key: value})
    if exp.tags.get(key) != value:
        client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """All params of a run, in batches of MLflow's per-call limit (100), values truncated to 6000."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
