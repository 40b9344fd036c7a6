"""MLflow plumbing shared by the search, hpo.train, promotion and the report.

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


def nested_filter(parent_run_id: str) -> str:
    """The search filter for the runs nested under a parent run (a search's trials)."""
    return f"tags.mlflow.parentRunId = '{parent_run_id}'"


def find_runs(client, experiment_id: str, filter_string: str) -> list:
    """Every run of an experiment matching an MLflow search filter (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def register_model(client, name: str, run_id: str, tags: dict[str, str] | None = None,
                   model_dir: str = "model") -> str:
    """A new version of registered model `name` whose source is the run's `model/` artifact folder
    (weights.pt + config.yaml; no MLflow flavour, so it works offline with any store)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="ctxtune: weights.pt (state_dict) + config.yaml")
    source = f"{client.get_run(run_id).info.artifact_uri}/{model_dir}"
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={k: str(v) for k, v in (tags or {}).items()})
    return str(version.version)
