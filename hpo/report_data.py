"""What `hpo.report` reads: locate a finished search, rebuild its trials, compute knob importance.

A search is found by name (under `--storage-path`, default ./ray_results), by its Ray results
directory, or by its MLflow parent run id. Its space file is the copy logged to the MLflow parent
run when the search started (space.yaml + base_config.yaml): the file on disk may have been edited
since; the path recorded in ctxtune_search.json is the fallback, `--space` overrides both. Its trials are rebuilt, in this order of preference,
from the Optuna journal beside the Ray results (it already holds params, intermediate values and
PRUNED/FAIL states), from Ray's per-trial `params.json`/`result.json`, or — when the Ray results
are not on this machine — from the MLflow nested runs. All three end as the same `TrialRecord`
list, and every analysis goes through Optuna studies rebuilt from them with
`optuna.trial.create_trial`, using the distributions of the space file.

Choices made here (documented because nothing upstream fixes them):
- "Full budget" means the trial ran `scheduler.max_t` validations without failing. With
  `search.feedback: complete` early-stopped trials are COMPLETE in the journal; they are still
  classified by how far they ran, not by their Optuna state.
- Importance per ASHA rung uses every trial that reached the rung (failed ones included when they
  reported a real score there), scored by its value *at that rung*; rung milestones follow Ray's
  own formula, a milestone m is reached at validation ceil(m).
- PED-ANOVA's `target_quantile` defaults to min(0.5, max(0.1, 10/n)) for n trials: Optuna's
  default 0.1 puts a single trial above the quantile in a 10-trial search (its docs ask for at
  least five). On a synthetic 2-real/2-noise-knob set with 20 full-budget trials, 10/n ranked the
  real knobs first in 8 of 10 seeds, 5/n in 4. fANOVA is seeded (0) so a report is reproducible;
  note it measures log-scale knobs over their linear range (Optuna's transform_log=False).
- A stage with fewer than `min_trials` (default 5) scored trials, or where every trial scored the
  same, gets no importance; the reason is kept and shown instead.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from hpo.config import decode_choice
from hpo.search import JOURNAL_FILE, STATE_FILE
from hpo.searcher import trial_status
from hpo.space import SpaceError, SpaceFile, load_space, optuna_distributions, rung_milestones

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
EVALUATORS = ("PED-ANOVA", "fANOVA")
STATUSES = ("completed", "early_stopped", "failed", "unfinished")


class ReportError(ValueError):
    """Bad report input (unknown search, unreadable results): one line, exit code 2."""


@dataclass
class TrialRecord:
    number: int
    trial_id: str                      # Ray trial id where known, else "#<number>"
    params: dict[str, Any]             # Optuna-encoded knob values (dotted keys)
    curve: dict[int, float]            # validation index (training_iteration) -> metric
    status: str                        # completed | early_stopped | failed | unfinished

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
class Search:
    name: str
    spec: SpaceFile
    trials: list[TrialRecord]
    source: str                        # where the trials came from (shown in the report)
    exp_dir: Path | None = None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
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

    def counts(self) -> dict[str, int]:
        return {s: sum(t.status == s for t in self.trials) for s in STATUSES}


# --- locating a search -----------------------------------------------------------------------

def locate(search: str, storage_path: str | None = None, tracking_uri: str | None = None,
           space: str | None = None) -> Search:
    """SEARCH as a Ray results directory, a search name under storage_path, or an MLflow parent run id."""
    path = Path(search).expanduser()
    storage = Path(storage_path or "./ray_results").expanduser()
    if path.is_dir() and ((path / STATE_FILE).is_file() or (path / JOURNAL_FILE).is_file()):
        return _from_exp_dir(path.resolve(), tracking_uri, space)
    if "/" not in search and (storage / search / STATE_FILE).is_file():
        return _from_exp_dir((storage / search).resolve(), tracking_uri, space)
    if RUN_ID.match(search):
        return _from_mlflow_run(search, tracking_uri, space)
    if path.is_dir():
        raise ReportError(f"SEARCH: {path} is not a ctxtune search directory (no {STATE_FILE})")
    raise ReportError(f"SEARCH: no search named '{search}' under {storage.resolve()} "
                      f"(nor a Ray results directory or an MLflow parent run id)")


def _from_exp_dir(exp_dir: Path, tracking_uri: str | None, space: str | None) -> Search:
    state: dict[str, Any] = {}
    if (exp_dir / STATE_FILE).is_file():
        try:
            state = json.loads((exp_dir / STATE_FILE).read_text())
        except ValueError:
            raise ReportError(f"SEARCH: {exp_dir / STATE_FILE} is not valid JSON") from None
    notes: list[str] = []
    uri = tracking_uri or state.get("tracking_uri")
    spec = None
    if not space and state.get("parent_run_id") and uri:
        # The copy logged when the search started is what actually ran; the file on disk may
        # have been edited since (budget, rungs, ranges).
        try:
            spec = _spec_from_run(_mlflow_client(uri)[0], state["parent_run_id"])
        except Exception as exc:  # noqa: BLE001 - fall back to the file the state names
            notes.append(f"space file read from {state.get('space')}, not from the MLflow parent run "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    if spec is None:
        space_path = space or state.get("space")
        if not space_path:
            raise ReportError(f"--space: {exp_dir} does not record its space file; pass --space SPACE.yaml")
        spec = _load_spec(space_path, "--space" if space else f"{STATE_FILE}.space")
    name = exp_dir.name
    journal = exp_dir / JOURNAL_FILE
    trials, source = None, ""
    if journal.is_file():
        trials = records_from_journal(journal, name, spec)
        source = "Optuna journal"
    if not trials:
        trials = records_from_ray(exp_dir, spec)
        source = "Ray results"
    longest = max((t.last_step for t in trials), default=0)
    if longest > int(spec.scheduler.max_t):
        notes.append(f"the space file does not match the recorded trials: a trial ran {longest} validations "
                     f"but scheduler.max_t is {spec.scheduler.max_t} (edited since the search? pass --space "
                     f"with the file the search used)")
    return Search(name=name, spec=spec, trials=trials, source=f"{source} ({exp_dir})", exp_dir=exp_dir,
                  parent_run_id=state.get("parent_run_id"), tracking_uri=uri, notes=notes)


def _load_spec(path: str, key: str) -> SpaceFile:
    if not Path(path).is_file():
        raise ReportError(f"{key}: space file {path} not found (pass --space SPACE.yaml)")
    try:
        return load_space(path)
    except SpaceError as err:
        raise ReportError(f"{key}: {err}") from None


def _mlflow_client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    from hpo.mlflow_store import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    # Opening a missing sqlite store would quietly create an empty one in the working directory.
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ReportError(f"--tracking-uri: no MLflow store at {uri}")
    return MlflowClient(tracking_uri=uri), uri


def _from_mlflow_run(run_id: str, tracking_uri: str | None, space: str | None) -> Search:
    from mlflow.exceptions import MlflowException

    client, uri = _mlflow_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ReportError(f"SEARCH: no MLflow run {run_id} in {uri}") from None
    name = run.data.tags.get("ctxtune.search")
    if not name:
        raise ReportError(f"SEARCH: MLflow run {run_id} is not the parent run of a ctxtune search "
                          f"(no ctxtune.search tag)")
    exp_dir = Path(run.data.tags.get("ray_results", ""))
    if str(exp_dir) and (exp_dir / STATE_FILE).is_file():
        found = _from_exp_dir(exp_dir, uri, space)
        found.parent_run_id = run_id
        return found
    spec = _load_spec(space, "--space") if space else _spec_from_run(client, run_id)
    trials = records_from_mlflow(client, run, spec)
    return Search(name=name, spec=spec, trials=trials, source=f"MLflow nested runs ({uri})",
                  parent_run_id=run_id, tracking_uri=uri)


def _spec_from_run(client, run_id: str) -> SpaceFile:
    """The space file the parent run logged, with its base replaced by the logged base config
    (a relative `base:` path would not resolve next to a downloaded artifact)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            space = yaml.safe_load(Path(client.download_artifacts(run_id, "space.yaml", tmp)).read_text())
            base = yaml.safe_load(Path(client.download_artifacts(run_id, "base_config.yaml", tmp)).read_text())
        except Exception:  # noqa: BLE001 - any artifact-store trouble means the same thing here
            raise ReportError(f"SEARCH: run {run_id} has no space.yaml/base_config.yaml artifacts; "
                              f"pass --space SPACE.yaml") from None
        space["base"] = base
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(space, sort_keys=False))
        return _load_spec(str(path), "space.yaml (MLflow artifact)")


# --- rebuilding trial records ------------------------------------------------------------------

def classify(curve: dict[int, float], errored: bool, max_t: int) -> str:
    last = {"training_iteration": max(curve)} if curve else None
    return trial_status(last, errored, max_t)


def records_from_journal(journal: Path, study_name: str, spec: SpaceFile) -> list[TrialRecord]:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        if len(names) != 1:
            return []
        study = optuna.load_study(study_name=names[0], storage=storage)
    max_t = int(spec.scheduler.max_t)
    out = []
    for t in study.get_trials(deepcopy=False):
        curve = {int(k): float(v) for k, v in t.intermediate_values.items()}
        if t.state == TrialState.COMPLETE and t.value is not None and not curve:
            curve = {max_t: float(t.value)}   # a searcher that never reported steps
        if t.state == TrialState.FAIL:
            status = "failed"
        elif t.state in (TrialState.RUNNING, TrialState.WAITING):
            status = "unfinished"
        else:
            status = classify(curve, False, max_t)
        out.append(TrialRecord(t.number, t.user_attrs.get("ray_trial_id", f"#{t.number}"),
                               dict(t.params), curve, status))
    return out


def records_from_ray(exp_dir: Path, spec: SpaceFile) -> list[TrialRecord]:
    max_t, metric = int(spec.scheduler.max_t), spec.scheduler.metric
    found = []
    for d in sorted(p for p in exp_dir.iterdir() if (p / "params.json").is_file()):
        params = json.loads((d / "params.json").read_text())
        rows = []
        if (d / "result.json").is_file():
            for line in (d / "result.json").read_text().splitlines():
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass     # a line cut short by an interrupted write
        curve = {int(r["training_iteration"]): float(r[metric]) for r in rows
                 if metric in r and "training_iteration" in r and not r.get("diverged")}
        last = rows[-1] if rows else None
        errored = (d / "error.txt").is_file() or (d / "error.pkl").is_file()
        status = trial_status(last, errored and (not curve or max(curve) < max_t), max_t)
        # Ray names trial dirs <trainable>_<id>_<index>_...; the index is the creation order.
        m = re.match(r".*?_([0-9a-f]{5,})_(\d+)_", d.name)
        trial_id = (last or {}).get("trial_id") or (m.group(1) if m else d.name)
        order = int(m.group(2)) if m else len(found) + 1
        found.append((order, trial_id, params, curve, status))
    found.sort(key=lambda x: x[0])
    return [TrialRecord(i, tid, params, curve, status) for i, (_, tid, params, curve, status) in enumerate(found)]


def records_from_mlflow(client, parent_run, spec: SpaceFile) -> list[TrialRecord]:
    metric = spec.scheduler.metric
    dists = optuna_distributions(spec)
    runs = client.search_runs([parent_run.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run.info.run_id}'", max_results=10000)
    runs = sorted(runs, key=lambda r: r.info.start_time or 0)
    out = []
    for i, run in enumerate(runs):
        params = {k: _parse_param(run.data.params.get(k), d) for k, d in dists.items()}
        params = {k: v for k, v in params.items() if v is not None}
        curve = {int(m.step): float(m.value) for m in client.get_metric_history(run.info.run_id, metric)}
        status = run.data.tags.get("status", "unfinished")
        if status == "running":
            status = "unfinished"
        out.append(TrialRecord(i, run.data.tags.get("ray_trial_id", f"#{i}"), params, curve, status))
    return out


def _parse_param(text: str | None, dist: BaseDistribution) -> Any:
    """MLflow params are str(value) of the resolved config; map back to the Optuna value."""
    if text is None:
        return None
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if str(decode_choice(choice)) == text:
                return choice
        return None
    try:
        return int(text) if isinstance(dist, optuna.distributions.IntDistribution) else float(text)
    except ValueError:
        return None


# --- Optuna studies rebuilt from the records ---------------------------------------------------

def display_value(value: Any) -> Any:
    """Readable form of a knob value: list-valued choices shown as lists, not as json: strings."""
    decoded = decode_choice(value)
    return str(decoded) if decoded is not value else value


def display_distributions(spec: SpaceFile) -> dict[str, BaseDistribution]:
    out = {}
    for key, dist in optuna_distributions(spec).items():
        if isinstance(dist, CategoricalDistribution):
            dist = CategoricalDistribution([display_value(c) for c in dist.choices])
        out[key] = dist
    return out


def rung_correlations(search: Search) -> list[tuple[int, int, float, int]]:
    """(rung, next rung, Spearman rho, trials) over the trials' logged curves: the rung self-check."""
    from hpo.rung_check import RungCorrelation

    check = RungCorrelation(rung_milestones(search.spec) + [search.max_t], search.mode)
    for t in search.trials:
        for step, value in t.curve.items():
            check.add(t.trial_id, step, value)
    return check.table()


def stages(search: Search) -> list[tuple[str, int | None]]:
    """(label, rung step) per analysis stage; step None = full budget."""
    unit = "epoch" if search.spec.base["budget"].get("val_every", 1) == 1 else "validation"
    return [(f"rung {unit} {s}", s) for s in rung_milestones(search.spec)] + [("full budget", None)]


def _new_study(search: Search) -> optuna.Study:
    direction = "maximize" if search.mode == "max" else "minimize"
    return optuna.create_study(direction=direction, study_name=search.name)


def _add(study: optuna.Study, record: TrialRecord, dists: dict, value: float, search: Search,
         constraints: dict[str, float] | None = None) -> None:
    params = {k: display_value(v) for k, v in record.params.items() if k in dists}
    try:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=value,
            intermediate_values=record.curve, user_attrs={"ray_trial_id": record.trial_id},
            constraints=constraints))
    except ValueError as err:   # a value outside today's space file (the file was edited since)
        search.notes.append(f"trial {record.trial_id} left out of the analysis: {err}")


def stage_study(search: Search, step: int | None) -> optuna.Study:
    """COMPLETE trials scored at a rung (step) or at the full budget (step None)."""
    dists = display_distributions(search.spec)
    study = _new_study(search)
    for r in search.trials:
        if step is None:
            value = r.curve.get(search.max_t, r.last_value) if r.status == "completed" else None
        else:
            value = r.curve.get(step)
        if value is not None and math.isfinite(value):
            _add(study, r, dists, value, search)
    return study


def finished_study(search: Search) -> optuna.Study:
    """Every finished trial scored at its last validation; early-stopped ones carry a violated
    constraint, which Optuna's slice/parallel-coordinate plots draw distinctly (grey / dotted)."""
    dists = display_distributions(search.spec)
    study = _new_study(search)
    for r in search.trials:
        if r.status in ("completed", "early_stopped") and r.last_value is not None and math.isfinite(r.last_value):
            _add(study, r, dists, r.last_value, search,
                 constraints={"early_stopped": 1.0 if r.status == "early_stopped" else 0.0})
    return study


# --- importance --------------------------------------------------------------------------------

def ped_quantile(n: int) -> float:
    return min(0.5, max(0.1, 10.0 / max(n, 1)))


def make_evaluator(name: str, n: int, ped_target_quantile: float | None = None):
    if name == "PED-ANOVA":
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=ped_target_quantile or ped_quantile(n))
    if name == "fANOVA":
        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    raise ValueError(f"unknown evaluator {name}")


def importance(study: optuna.Study, evaluator: str, min_trials: int = 5,
               ped_target_quantile: float | None = None) -> tuple[dict[str, float] | None, str | None]:
    """Normalised importances (descending) or (None, reason)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = len(trials)
    if n < min_trials:
        return None, f"only {n} scored trial{'s' if n != 1 else ''} (need at least {min_trials}, --min-trials)"
    if len({t.value for t in trials}) == 1:
        return None, f"all {n} trials scored the same ({trials[0].value:g})"
    varied = [k for k, d in trials[0].distributions.items() if len({t.params.get(k) for t in trials}) > 1]
    if not varied:
        return None, "no knob took more than one value"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # Optuna's small-sample warnings; the report says n
        result = optuna.importance.get_param_importances(
            study, evaluator=make_evaluator(evaluator, n, ped_target_quantile))
    return dict(sorted(result.items(), key=lambda kv: -kv[1])), None


def importance_table(search: Search, min_trials: int = 5, ped_target_quantile: float | None = None
                     ) -> dict[str, dict[str, Any]]:
    """{stage label: {"n": trials, "step": step, evaluator: {knob: share} | None, "reason": str|None}}."""
    table: dict[str, dict[str, Any]] = {}
    for label, step in stages(search):
        study = stage_study(search, step)
        row: dict[str, Any] = {"n": len(study.trials), "step": step, "reason": None}
        for ev in EVALUATORS:
            row[ev], reason = importance(study, ev, min_trials, ped_target_quantile)
            row["reason"] = row["reason"] or reason
        table[label] = row
    return table
