"""One way to find a finished (or interrupted) search: a name, a folder or a parent run id -> a handle.

`find_search(query)` accepts
- a search name, looked up under `storage_path` (default ./ray_results): `<storage>/<name>/`;
- the search's Ray results folder (it holds `ctxtune_search.json` or the Optuna journal);
- the search's MLflow parent run id (32 hex digits), or the name of its MLflow experiment, looked
  up in `tracking_uri` (default: the one the search recorded, else MLflow's default store).
Anything else is one `SearchNotFound` line saying where it looked.

The `SearchHandle` it returns knows the search's paths, its MLflow ids, its space file and its trials:
- The space file is the copy logged to the MLflow parent run when the search started
  (space.yaml + base_config.yaml): that is what ran, while the file on disk may have been edited
  since. The path recorded in `ctxtune_search.json` is the fallback (a note says so), and an
  explicit `space=` (the commands' `--space`) overrides both.
- Its trials (`TrialRecord`, the one record type of a trial) are rebuilt, in this order of
  preference, from the Optuna journal beside the Ray results (it already holds params,
  intermediate values, and the `status` the searcher wrote), from Ray's per-trial
  `params.json`/`result.json`, or, when the Ray results are not on this machine, from the MLflow
  nested runs. Each record carries its MLflow run id where the tracking store knows it.

The trial vocabulary (statuses, result keys, file names) is hpo.trials'. Room `hpo.results`: a
finished search, read back without Ray (`hpo.report` starts fast); it never imports Ray.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from hpo.config import apply_overrides, decode_choice, display_value
from hpo.trials import ITERATION, JOURNAL_FILE, STATE_FILE, STATUSES, ray_results, result_rows, trial_status
from hpo.tracking.store import find_runs, nested_filter, resolve_tracking_uri
from hpo.tuning.space import SpaceError, SpaceFile, load_space, optuna_distributions

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class SearchNotFound(ValueError):
    """No search matches the query, or its records cannot be read: one line, exit code 2."""


@dataclass
class TrialRecord:
    number: int                         # creation order
    trial_id: str                       # Ray trial id where known, else "#<number>"
    params: dict[str, Any]              # Optuna-encoded knob values (dotted keys)
    curve: dict[int, float]             # validation index (training_iteration) -> metric
    status: str                         # completed | early_stopped | failed | unfinished
    run_id: str | None = None           # its MLflow run, where the tracking store has it
    cost: dict[int, float] = field(default_factory=dict)   # validation -> device-seconds (hpo.results.ledger)
    device_kind: str | None = None      # what the cost counts: "gpu" or "cpu" seconds

    @property
    def last_step(self) -> int:
        return max(self.curve, default=0)

    @property
    def last_value(self) -> float | None:
        return self.curve[self.last_step] if self.curve else None

    def best_value(self, mode: str) -> float | None:
        vals = [v for v in self.curve.values() if math.isfinite(v)]
        if not vals:
            return None
        return max(vals) if mode == "max" else min(vals)


@dataclass
class SearchHandle:
    name: str
    spec: SpaceFile
    exp_dir: Path | None = None              # Ray results folder, when on this machine
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    space_source: str = ""                   # where the space file was read from
    notes: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.spec.scheduler.metric

    @property
    def mode(self) -> str:
        return self.spec.scheduler.mode

    @property
    def max_t(self) -> int:
        return int(self.spec.scheduler.max_t)

    @cached_property
    def client(self):
        """An MLflow client of the search's store, or None when there is none here."""
        try:
            return _client(self.tracking_uri) if self.tracking_uri else None
        except SearchNotFound:
            return None

    @cached_property
    def _loaded(self) -> tuple[list[TrialRecord], str]:
        trials, source = [], ""
        if self.exp_dir is not None and (self.exp_dir / JOURNAL_FILE).is_file():
            trials, source = records_from_journal(self.exp_dir / JOURNAL_FILE, self.name, self.spec), "Optuna journal"
        if not trials and self.exp_dir is not None:
            trials, source = records_from_ray(self.exp_dir, self.spec), "Ray results"
        runs = self._runs()
        if not trials and runs:
            return records_from_mlflow(self.client, runs, self.spec), f"MLflow nested runs ({self.tracking_uri})"
        by_trial = {r.data.tags.get("ray_trial_id"): r.info.run_id for r in runs}
        results = ray_results(self.exp_dir) if self.exp_dir is not None and source != "Ray results" else {}
        for t in trials:
            t.run_id = by_trial.get(t.trial_id)
            if t.trial_id in results:
                t.cost, t.device_kind = _cost(results[t.trial_id])
        longest = max((t.last_step for t in trials), default=0)
        if longest > self.max_t:
            self.notes.append(f"the space file does not match the recorded trials: a trial ran {longest} validations "
                              f"but scheduler.max_t is {self.max_t} (edited since the search? pass --space "
                              f"with the file the search used)")
        return trials, f"{source} ({self.exp_dir})"

    @property
    def trials(self) -> list[TrialRecord]:
        return self._loaded[0]

    @property
    def source(self) -> str:
        """Where the trials came from (shown in the report)."""
        return self._loaded[1]

    def counts(self) -> dict[str, int]:
        return {s: sum(t.status == s for t in self.trials) for s in STATUSES}

    def leaderboard(self) -> list[dict]:
        """Ranked by `score`, the one definition of a trial's score: its value at the full budget (what
        ASHA, the Optuna study and promotion compare). Full-budget trials first; early-stopped ones
        after them by their last score (at a shorter budget); failed trials have none. `best` is the
        best validation a trial had, shown beside it as such (a best epoch, not the score)."""
        sign = 1 if self.mode == "max" else -1
        rows = []
        for t in self.trials:
            score = t.last_value if t.status in ("completed", "early_stopped") else None
            best = t.best_value(self.mode) if t.status != "failed" else None
            rows.append({"trial": t.trial_id, "status": t.status, "epochs": t.last_step, "score": score, "best": best,
                         "last": t.last_value, "cost": sum(t.cost.values()) if t.cost else None,
                         **{k: display_value(t.params.get(k)) for k in self.spec.space}})
        rows.sort(key=lambda r: (r["status"] != "completed", r["score"] is None, -sign * (r["score"] or 0.0)))
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        return rows

    def trial_config(self, record: TrialRecord) -> dict:
        """The resolved run config the trial trained: its logged config.yaml, else base + its knobs."""
        if record.run_id and self.client is not None:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    return yaml.safe_load(Path(self.client.download_artifacts(record.run_id, "config.yaml", tmp))
                                          .read_text())
                except Exception:  # noqa: BLE001 - fall back to the base config + knobs below
                    pass
        return apply_overrides(self.spec.base, record.params)

    def _runs(self) -> list:
        """The nested MLflow runs of the trials ([] when the store is out of reach)."""
        if self.client is None or not self.parent_run_id or not self.experiment_id:
            return []
        try:
            return find_runs(self.client, self.experiment_id, nested_filter(self.parent_run_id))
        except Exception as exc:  # noqa: BLE001 - the trials may still come from the files here
            self.notes.append(f"MLflow {self.tracking_uri} not readable ({type(exc).__name__}); trials without run ids")
            return []


# --- finding a search --------------------------------------------------------------------------

def find_search(query: str, storage_path: str | None = None, tracking_uri: str | None = None,
                space: str | None = None) -> SearchHandle:
    storage = Path(storage_path or "./ray_results").expanduser().resolve()
    as_path = Path(query).expanduser()
    for folder in (as_path, storage / query):
        if folder.is_dir() and ((folder / STATE_FILE).is_file() or (folder / JOURNAL_FILE).is_file()):
            handle = _from_folder(folder.resolve(), tracking_uri, space)
            handle.trials      # read now (see below)
            return handle
    uri = resolve_tracking_uri(tracking_uri)
    where = (f"looked for {storage / query / STATE_FILE} (a search name), {as_path.resolve() / STATE_FILE} "
             f"(a Ray results folder) and for a search parent run or experiment of that name in MLflow {uri}")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise SearchNotFound(f"no search '{query}': {where} (no MLflow store at {uri})")
    parent = _find_parent_run(_client(uri), query)
    if parent is None:
        raise SearchNotFound(f"no search '{query}': {where}")
    folder = Path(parent.data.tags.get("ray_results", ""))
    if parent.data.tags.get("ray_results") and (folder / STATE_FILE).is_file():
        handle = _from_folder(folder, uri, space)
    else:     # the Ray results stayed elsewhere (a cluster): the trials come from the nested runs
        spec, source = (_load(space, "--space"), space) if space else (_spec_from_run(_client(uri), parent.info.run_id),
                                                                        "the MLflow parent run")
        handle = SearchHandle(parent.data.tags["ctxtune.search"], spec, parent_run_id=parent.info.run_id,
                              tracking_uri=uri, experiment_id=parent.info.experiment_id, space_source=source)
    handle.trials          # read now: a mismatch between space file and trials is a note from the start
    return handle


def _find_parent_run(client, query: str):
    try:
        if RUN_ID.fullmatch(query):
            run = client.get_run(query)
            return run if run.data.tags.get("ctxtune.search") else None
        exp = client.get_experiment_by_name(query)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], f"tags.`ctxtune.search` = '{query}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None
    except Exception:  # noqa: BLE001 - unknown id / unreachable store: reported as "not found" with the URI
        return None


def read_state(exp_dir: Path) -> dict[str, Any]:
    path = Path(exp_dir) / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError:
        state = None
    if not isinstance(state, dict):
        raise SearchNotFound(f"{path}: not a ctxtune search state (expected a JSON object)")
    return state


def write_state(exp_dir: Path, parent_run_id: str, tracking_uri: str, experiment_id: str, space: str) -> None:
    (Path(exp_dir) / STATE_FILE).write_text(json.dumps({
        "parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "experiment_id": experiment_id,
        "space": space}))


def _from_folder(exp_dir: Path, tracking_uri: str | None, space: str | None) -> SearchHandle:
    state = read_state(exp_dir)
    uri = tracking_uri or state.get("tracking_uri")
    uri = resolve_tracking_uri(uri) if uri else None
    notes: list[str] = []
    spec, source, experiment_id = None, "", state.get("experiment_id")
    if space:
        spec, source = _load(space, "--space"), space
    elif state.get("parent_run_id") and uri:
        try:
            client = _client(uri)
            spec, source = _spec_from_run(client, state["parent_run_id"]), "the MLflow parent run"
            experiment_id = state.get("experiment_id") or client.get_run(state["parent_run_id"]).info.experiment_id
        except Exception as exc:  # noqa: BLE001 - fall back to the file the state names
            notes.append(f"space file read from {state.get('space')}, not from the MLflow parent run "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    if spec is None:
        if not state.get("space"):
            raise SearchNotFound(f"--space: {exp_dir} does not record its space file; pass --space SPACE.yaml")
        spec, source = _load(state["space"], f"{STATE_FILE}.space"), state["space"]
    return SearchHandle(exp_dir.name, spec, exp_dir=exp_dir, parent_run_id=state.get("parent_run_id"),
                        tracking_uri=uri, experiment_id=experiment_id, space_source=source, notes=notes)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    # Opening a missing sqlite store would quietly create an empty one in the working directory.
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise SearchNotFound(f"--tracking-uri: no MLflow store at {uri}")
    return MlflowClient(tracking_uri=uri)


def _load(path: str, key: str) -> SpaceFile:
    if not Path(path).is_file():
        raise SearchNotFound(f"{key}: space file {path} not found (pass --space SPACE.yaml)")
    try:
        return load_space(path)
    except SpaceError as err:
        raise SearchNotFound(f"{key}: {err}") from None


def _spec_from_run(client, run_id: str) -> SpaceFile:
    """The space file the parent run logged, with its base replaced by the logged base config
    (a relative `base:` path would not resolve next to a downloaded artifact)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            space = yaml.safe_load(Path(client.download_artifacts(run_id, "space.yaml", tmp)).read_text())
            base = yaml.safe_load(Path(client.download_artifacts(run_id, "base_config.yaml", tmp)).read_text())
        except Exception:  # noqa: BLE001 - any artifact-store trouble means the same thing here
            raise SearchNotFound(f"run {run_id} has no space.yaml/base_config.yaml artifacts; "
                                 f"pass --space SPACE.yaml") from None
        space["base"] = base
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(space, sort_keys=False))
        return _load(str(path), "space.yaml (MLflow artifact)")


# --- rebuilding trial records ------------------------------------------------------------------

def records_from_journal(journal: Path, study_name: str, spec: SpaceFile) -> list[TrialRecord]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(journal)))
    names = [s.study_name for s in storage.get_all_studies()]
    if study_name not in names:
        if len(names) != 1:
            return []
        study_name = names[0]
    study = optuna.load_study(study_name=study_name, storage=storage)
    max_t = int(spec.scheduler.max_t)
    out = []
    for t in study.get_trials(deepcopy=False):
        curve = {int(k): float(v) for k, v in t.intermediate_values.items()}
        if t.state == TrialState.COMPLETE and t.value is not None and not curve:
            curve = {max_t: float(t.value)}   # a searcher that never reported steps
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            status = "unfinished"
        else:   # the searcher's own reading; a journal written by another searcher: FAIL or by length
            status = t.user_attrs.get("status") or ("failed" if t.state == TrialState.FAIL else
                                                    trial_status({ITERATION: max(curve, default=0)},
                                                                 not curve, max_t))
        out.append(TrialRecord(t.number, t.user_attrs.get("ray_trial_id", f"#{t.number}"), dict(t.params), curve,
                               status))
    return out


def _cost(rows: list[dict]) -> tuple[dict[int, float], str | None]:
    """Device-seconds per validation (summed over re-runs of a step) and their kind."""
    cost: dict[int, float] = {}
    for r in rows:
        if "device_seconds" in r and ITERATION in r:
            step = int(r[ITERATION])
            cost[step] = cost.get(step, 0.0) + float(r["device_seconds"])
    kinds = {r["device_kind"] for r in rows if "device_kind" in r}
    return cost, (kinds.pop() if len(kinds) == 1 else None)


def records_from_ray(exp_dir: Path, spec: SpaceFile) -> list[TrialRecord]:
    max_t, metric = int(spec.scheduler.max_t), spec.scheduler.metric
    found = []
    for d in sorted(p for p in exp_dir.iterdir() if (p / "params.json").is_file()):
        params = json.loads((d / "params.json").read_text())
        rows = result_rows(d / "result.json")
        curve = {int(r[ITERATION]): float(r[metric]) for r in rows
                 if metric in r and ITERATION in r}
        last = rows[-1] if rows else None
        errored = (d / "error.txt").is_file() or (d / "error.pkl").is_file()
        status = trial_status(last, errored and (not curve or max(curve) < max_t), max_t)
        # Ray names trial dirs <trainable>_<id>_<index>_...; the index is the creation order.
        m = re.match(r".*?_([0-9a-f]{5,})_(\d+)_", d.name)
        trial_id = (last or {}).get("trial_id") or (m.group(1) if m else d.name)
        order = int(m.group(2)) if m else len(found) + 1
        found.append((order, TrialRecord(0, trial_id, params, curve, status, None, *_cost(rows))))
    found.sort(key=lambda x: x[0])
    for i, (_, record) in enumerate(found):
        record.number = i
    return [record for _, record in found]


def records_from_mlflow(client, runs: list, spec: SpaceFile) -> list[TrialRecord]:
    metric = spec.scheduler.metric
    dists = optuna_distributions(spec)
    out = []
    for i, run in enumerate(sorted(runs, key=lambda r: r.info.start_time or 0)):
        params = {k: _parse_param(run.data.params.get(k), d) for k, d in dists.items()}
        params = {k: v for k, v in params.items() if v is not None}
        curve = {int(m.step): float(m.value) for m in client.get_metric_history(run.info.run_id, metric)}
        cost = {int(m.step): float(m.value) for m in client.get_metric_history(run.info.run_id, "device_seconds")}
        status = run.data.tags.get("status", "unfinished")
        out.append(TrialRecord(i, run.data.tags.get("ray_trial_id", f"#{i}"), params, curve,
                               "unfinished" if status == "running" else status, run.info.run_id, cost,
                               run.data.tags.get("device_kind")))
    return out


def _parse_param(text: str | None, dist) -> Any:
    """MLflow params are str(value) of the resolved config; map back to the Optuna value."""
    import optuna

    if text is None:
        return None
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        for choice in dist.choices:
            if str(decode_choice(choice)) == text:
                return choice
        return None
    try:
        return int(text) if isinstance(dist, optuna.distributions.IntDistribution) else float(text)
    except ValueError:
        return None
