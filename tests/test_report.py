"""The knob-sensitivity report on synthetic recorded searches: real Optuna journals, real MLflow
sqlite stores, fake (but Ray-formatted) trial directories; no Ray run needed."""

from __future__ import annotations

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import optuna
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from conftest import tiny_run_config
from hpo import report
from hpo.execution.runner import report_or_warn
from hpo.results.leaderboard import format_leaderboard, leaderboard_csv
from hpo.results import report_page
from hpo.config import apply_overrides, dump_yaml, flatten
from hpo.trials import STATE_FILE
from hpo.results.handle import (SearchHandle, find_search as locate, records_from_journal,
                               records_from_ray)
from hpo.results.sensitivity import EVALUATORS, importance_table
from hpo.tuning.space import load_space, optuna_distributions

MAX_T = 3     # tiny_run_config's budget: 3 validations; ASHA grace 1, factor 3 -> one rung at 1
KNOBS = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "optim.momentum": {"type": "float", "low": 0.5, "high": 0.99},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "loss.aux_weights.selection": {"type": "float", "low": 0.1, "high": 1.5},
}


def write_space(tmp_path: Path, name: str, space: dict | None = None) -> Path:
    doc = {
        "experiment": {"name": name, "storage_path": str(tmp_path / "ray_results"),
                       "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "base": tiny_run_config(tmp_path / "data"),
        "space": space or KNOBS,
        "search": {"sampler": "random", "num_samples": 8},
        "scheduler": {"name": "asha", "max_t": MAX_T, "grace_period": 1, "reduction_factor": 3, "trust": "raw"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


_DISTS: dict[str, dict] = {}


def distributions(tmp_path: Path, space: dict | None = None) -> dict:
    """Optuna distributions of a space (validating a space file builds models: do it once per space)."""
    key = json.dumps(space or KNOBS, sort_keys=True)
    if key not in _DISTS:
        _DISTS[key] = optuna_distributions(load_space(write_space(tmp_path, "probe", space)))
    return _DISTS[key]


def synthetic_trials(dists: dict, score, n: int, seed: int = 0, n_failed: int = 1) -> list[dict]:
    """Random knob draws scored by `score(params)`; like ASHA, the worse half stops after rung 1."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        params = {}
        for key, d in dists.items():
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                params[key] = d.choices[rng.integers(len(d.choices))]
            elif d.log:
                params[key] = float(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
            elif isinstance(d, optuna.distributions.IntDistribution):
                params[key] = int(rng.integers(d.low, d.high + 1))
            else:
                params[key] = float(rng.uniform(d.low, d.high))
        final = score(params) + rng.normal(0, 0.3)
        trials.append({"id": f"{i:05x}abc", "params": params,
                       "curve": {e: final * (0.5 + 0.5 * e / MAX_T) for e in range(1, MAX_T + 1)}})
    cutoff = np.median([t["curve"][1] for t in trials])
    for t in trials:
        if t["curve"][1] < cutoff:
            t["curve"] = {1: t["curve"][1]}
            t["state"] = TrialState.PRUNED
        else:
            t["state"] = TrialState.COMPLETE
    for t in trials[-n_failed:] if n_failed else []:
        t["curve"] = {1: t["curve"][1]}
        t["state"] = TrialState.FAIL
    return trials


def write_search(tmp_path: Path, name: str, trials: list[dict], journal: bool = True, ray: bool = False,
                 parent: bool = True, space: dict | None = None) -> Path:
    """A finished search's directory, as hpo.search leaves it (journal and/or Ray trial dirs)."""
    space_path = write_space(tmp_path, name, space)
    exp_dir = tmp_path / "ray_results" / name
    exp_dir.mkdir(parents=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    state = {"space": str(space_path), "tracking_uri": uri}
    if parent:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name)
        pid = client.create_run(exp_id, run_name=name, tags={"ctxtune.search": name}).info.run_id
        client.log_text(pid, space_path.read_text(), "space.yaml")       # as hpo.search does
        client.log_text(pid, dump_yaml(yaml.safe_load(space_path.read_text())["base"]), "base_config.yaml")
        state["parent_run_id"] = pid
    (exp_dir / STATE_FILE).write_text(json.dumps(state))
    dists = distributions(tmp_path, space)
    if journal:
        study = optuna.create_study(study_name=name, direction="maximize",
                                    storage=JournalStorage(JournalFileBackend(str(exp_dir / "optuna_journal.log"))))
        for t in trials:
            value = t["curve"][max(t["curve"])] if t["state"] == TrialState.COMPLETE else None
            if t["state"] == TrialState.PRUNED:
                value = t["curve"][max(t["curve"])]   # Optuna's tell(PRUNED) records the last intermediate
            study.add_trial(optuna.trial.create_trial(
                state=t["state"], value=value, params=t["params"], distributions=dists,
                intermediate_values=t["curve"], user_attrs={"ray_trial_id": t["id"]}))
    if ray:
        for i, t in enumerate(trials, 1):
            d = exp_dir / f"run_trial_{t['id']}_{i}_knobs=x_2026-01-01_00-00-00"
            d.mkdir()
            (d / "params.json").write_text(json.dumps(t["params"]))
            rows = [{"training_iteration": e, "val_miou": v, "trial_id": t["id"]} for e, v in t["curve"].items()]
            if t["state"] == TrialState.FAIL:
                (d / "error.txt").write_text("RuntimeError: boom")
            (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return exp_dir


def best_of(curve: dict, mode: str) -> float:
    return max(curve.values()) if mode == "max" else min(curve.values())


def last_of(curve: dict, mode: str) -> float:
    """A trial's score: its value at the last validation it ran (the full budget for completed ones)."""
    return curve[max(curve)]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_leaderboard_ranks_full_budget_trials_first_best_score_first(tmp_path, mode):
    """The leaderboard's rule: trials that ran the full budget first, each group by its score at its
    last validation (the full budget for those; highest for mode max, lowest for min), failed trials
    last; ranks 1..n in that order; the best epoch's value is shown beside, not ranked on."""
    trials = synthetic_trials(distributions(tmp_path), lambda p: 40 * p["optim.momentum"], n=12, n_failed=2)
    exp_dir = write_search(tmp_path, "board", trials, parent=False)
    handle = locate(str(exp_dir))
    if mode == "min":
        doc = yaml.safe_load(Path(json.loads((exp_dir / STATE_FILE).read_text())["space"]).read_text())
        doc["scheduler"]["mode"] = "min"
        (tmp_path / "min.yaml").write_text(yaml.safe_dump(doc))
        handle = SearchHandle("board", load_space(tmp_path / "min.yaml"), exp_dir=exp_dir)
    # the expected order, computed here from the trials as written
    better_first = (lambda t: -last_of(t["curve"], mode) if mode == "max" else last_of(t["curve"], mode))
    full = sorted((t for t in trials if t["state"] == TrialState.COMPLETE), key=better_first)
    stopped = sorted((t for t in trials if t["state"] == TrialState.PRUNED), key=better_first)
    failed = {t["id"] for t in trials if t["state"] == TrialState.FAIL}
    assert len(full) >= 3 and len(stopped) >= 3 and len(failed) == 2
    rows = handle.leaderboard()
    assert [r["rank"] for r in rows] == list(range(1, len(trials) + 1))
    assert [r["trial"] for r in rows[:len(full)]] == [t["id"] for t in full]
    assert [r["trial"] for r in rows[len(full):len(full) + len(stopped)]] == [t["id"] for t in stopped]
    assert {r["trial"] for r in rows[len(full) + len(stopped):]} == failed
    assert rows[0]["score"] == pytest.approx(last_of(full[0]["curve"], mode))
    assert rows[0]["best"] == pytest.approx(best_of(full[0]["curve"], mode))
    assert all(r["score"] is None for r in rows if r["trial"] in failed)
    assert all(r["best"] is None for r in rows if r["trial"] in failed)
    by_id = {t["id"]: t for t in trials}
    for r in rows:                      # each row: the trial's last score, epochs, knobs; no cost without Ray results
        t = by_id[r["trial"]]
        assert (r["last"], r["epochs"], r["cost"]) == (t["curve"][max(t["curve"])], max(t["curve"]), None)
        assert r["optim.lr"] == pytest.approx(t["params"]["optim.lr"])
        assert r["optim.momentum"] == pytest.approx(t["params"]["optim.momentum"])
    # the CSV logged to the parent run keeps that order
    csv_rows = leaderboard_csv(rows, list(KNOBS), "val_miou").splitlines()[1:]
    assert [ln.split(",")[:2] for ln in csv_rows[:2]] == [["1", full[0]["id"]], ["2", full[1]["id"]]]


def test_a_full_budget_score_of_zero_ranks_below_a_positive_one(tmp_path):
    """A trial that learned nothing (val mIoU 0.0 at every validation) is a score, not a missing one."""
    dists = distributions(tmp_path)
    base = synthetic_trials(dists, lambda p: 10.0, n=3, n_failed=0)
    for t, value in zip(base, (0.0, 0.5, 0.25)):
        t["curve"], t["state"] = {e: value for e in range(1, MAX_T + 1)}, TrialState.COMPLETE
    rows = locate(str(write_search(tmp_path, "zero", base, parent=False))).leaderboard()
    assert [(r["trial"], r["score"]) for r in rows] == [(base[1]["id"], 0.5), (base[2]["id"], 0.25), (base[0]["id"], 0.0)]


def ranking(table: dict, stage: str, evaluator: str) -> list[str]:
    imp = table[stage][evaluator]
    assert imp is not None, table[stage]["reason"]
    return list(imp)


def test_single_driving_knob_ranks_first(tmp_path):
    trials = synthetic_trials(distributions(tmp_path), lambda p: 60 * (p["optim.momentum"] - 0.5), n=40)
    exp_dir = write_search(tmp_path, "one-knob", trials, parent=False)
    found = locate(str(exp_dir))
    n_complete = sum(t["state"] == TrialState.COMPLETE for t in trials)
    assert found.counts() == {"completed": n_complete, "early_stopped": 39 - n_complete, "failed": 1,
                              "unfinished": 0}
    table = importance_table(found)
    assert list(table) == ["rung epoch 1", "full budget"]
    assert table["rung epoch 1"]["n"] == 40 and table["full budget"]["n"] == n_complete
    for stage in table:
        for ev in EVALUATORS:
            assert ranking(table, stage, ev)[0] == "optim.momentum", (stage, ev, table[stage][ev])


def test_two_real_knobs_rank_above_two_noise_knobs(tmp_path):
    def score(p):   # momentum and the aux weight move the score equally; lr and dropout are noise
        return 30 * (p["optim.momentum"] - 0.5) / 0.49 + 30 * (p["loss.aux_weights.selection"] - 0.1) / 1.4
    trials = synthetic_trials(distributions(tmp_path), score, n=100, seed=1)
    table = importance_table(locate(str(write_search(tmp_path, "two-knobs", trials, parent=False))))
    for stage in table:
        for ev in EVALUATORS:
            ranks = ranking(table, stage, ev)
            assert set(ranks[:2]) == {"optim.momentum", "loss.aux_weights.selection"}, (stage, ev, table[stage][ev])


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_report_html_embeds_every_figure_and_is_logged_to_the_parent_run(tmp_path, capsys):
    # a list-valued categorical knob travels JSON-encoded; the report shows it decoded
    space = {**KNOBS, "data.crop": {"type": "categorical", "choices": [[64, 64], [128, 128]]}}
    trials = synthetic_trials(distributions(tmp_path, space), lambda p: 50 * p["optim.momentum"], n=16)
    exp_dir = write_search(tmp_path, "full", trials, space=space)
    assert report.main([str(exp_dir)]) == 0
    out = capsys.readouterr().out
    assert "importance PED-ANOVA full budget" in out and "logged under report/" in out

    html_path = exp_dir / "report" / "report.html"
    page = parse_page(html_path)
    pngs = sorted((exp_dir / "report").glob("*.png"))
    assert {p.stem for p in pngs} == set(report_page.FIGURES)
    embedded = [s for s in page.images if s.startswith("data:image/png;base64,")]
    assert len(embedded) == len(page.images) == len(pngs) == 4
    for src in embedded:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    for p in pngs:
        assert cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR) is not None
    text = " ".join(page.text)
    assert "[64, 64]" in text and "json:" not in text
    assert all(t["id"] in text for t in trials)            # leaderboard lists every trial

    state = json.loads((exp_dir / STATE_FILE).read_text())
    client = MlflowClient(state["tracking_uri"])
    logged = {Path(a.path).name for a in client.list_artifacts(state["parent_run_id"], "report")}
    assert logged == {"report.html", *(p.name for p in pngs)}


def test_too_few_trials_still_renders_and_says_why(tmp_path, capsys):
    trials = synthetic_trials(distributions(tmp_path), lambda p: 10 * p["optim.momentum"], n=4, n_failed=0)
    exp_dir = write_search(tmp_path, "few", trials)
    out_dir = tmp_path / "out"
    assert report.main(["few", "--storage-path", str(tmp_path / "ray_results"), "--out", str(out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    missing = [ln for ln in lines if ln.startswith("importance missing")]
    assert missing == ["importance missing for rung epoch 1: only 4 scored trials (need at least 5, --min-trials)",
                       "importance missing for full budget: only 2 scored trials (need at least 5, --min-trials)"]
    page = parse_page(out_dir / "report.html")
    text = " ".join(page.text)
    assert "No importance for full budget: only 2 scored trials" in text
    assert len(page.images) == 3                     # slice, parallel coordinate, learning curves
    assert not (out_dir / "importance.png").exists()
    assert not (exp_dir / "report").exists()         # --out was honoured


def test_space_file_edited_after_the_search(tmp_path, capsys):
    """The report reads the space the search ran with (logged to MLflow), not today's file."""
    trials = synthetic_trials(distributions(tmp_path), lambda p: 20 * p["optim.momentum"], n=8)
    n_complete = sum(t["state"] == TrialState.COMPLETE for t in trials)
    for parent in (True, False):
        (tmp_path / str(parent)).mkdir()
        exp_dir = write_search(tmp_path / str(parent), "edited", trials, parent=parent)
        space_path = Path(json.loads((exp_dir / STATE_FILE).read_text())["space"])
        doc = yaml.safe_load(space_path.read_text())
        doc["scheduler"]["max_t"] = 2                      # edited after the search ran 3 validations
        space_path.write_text(yaml.safe_dump(doc))
        found = locate(str(exp_dir))
        if parent:
            assert found.spec.scheduler.max_t == MAX_T and found.counts()["completed"] == n_complete
            assert not found.notes
        else:   # no frozen copy to read: the mismatch is said, not silently misread
            assert found.spec.scheduler.max_t == 2
            assert any("ran 3 validations but scheduler.max_t is 2" in n for n in found.notes)


def test_ray_results_rebuild_matches_the_journal(tmp_path, capsys):
    trials = synthetic_trials(distributions(tmp_path), lambda p: 30 * p["optim.momentum"], n=12)
    exp_dir = write_search(tmp_path, "both", trials, journal=True, ray=True)
    spec = locate(str(exp_dir)).spec
    from_journal = records_from_journal(exp_dir / "optuna_journal.log", "both", spec)
    from_ray = records_from_ray(exp_dir, spec)
    assert [(r.trial_id, r.status, r.curve) for r in from_ray] == \
           [(r.trial_id, r.status, r.curve) for r in from_journal]
    for a, b in zip(from_ray, from_journal):
        assert a.params == pytest.approx(b.params)
    # without the journal the report is rebuilt from the Ray trial directories
    (exp_dir / "optuna_journal.log").unlink()
    assert report.main([str(exp_dir), "--no-mlflow"]) == 0
    assert "from the Ray results" in capsys.readouterr().out


def test_report_from_mlflow_parent_run_id_without_ray_results(tmp_path, capsys):
    """The Ray results stayed on the cluster: nested MLflow runs are enough."""
    space_path = write_space(tmp_path, "remote")
    base = yaml.safe_load(space_path.read_text())["base"]
    trials = synthetic_trials(distributions(tmp_path), lambda p: 40 * p["optim.momentum"], n=12)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("remote")
    parent = client.create_run(exp_id, tags={"ctxtune.search": "remote", "ray_results": "/nowhere/remote"})
    pid = parent.info.run_id
    client.log_text(pid, space_path.read_text(), "space.yaml")
    client.log_text(pid, dump_yaml(base), "base_config.yaml")
    status = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "early_stopped", TrialState.FAIL: "failed"}
    for t in trials:
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": pid, "ray_trial_id": t["id"],
                                              "status": status[t["state"]]}).info.run_id
        params = flatten(apply_overrides(base, t["params"]))
        client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()],
                         metrics=[Metric("val_miou", v, 0, step) for step, v in t["curve"].items()])
    out_dir = tmp_path / "out"
    assert report.main([pid, "--tracking-uri", uri, "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    n_complete = sum(t["state"] == TrialState.COMPLETE for t in trials)
    assert f"{n_complete} full budget, {11 - n_complete} early-stopped, 1 failed" in out
    assert "MLflow nested runs" in out
    assert {Path(a.path).name for a in client.list_artifacts(pid, "report")} >= {"report.html", "slice.png"}


def test_unknown_search_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert report.main(["no-such-search"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no search 'no-such-search'")
    assert report.main(["0123456789abcdef0123456789abcdef"]) == 2   # a run id, but no MLflow store here
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow store" in err[0]
    assert not (tmp_path / "mlflow.db").exists()          # looking did not create a store


def test_auto_report_never_fails_the_search(tmp_path, capsys):
    """The report a search writes at its end: any problem is one warning line, the search succeeds."""
    spec = load_space(write_space(tmp_path, "broken"))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the report folder would go below this file")
    report_or_warn(SearchHandle("broken", spec, exp_dir=blocker))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the sensitivity report failed"), err
    assert f"python -m hpo.report {blocker}" in err[0]


def test_report_cost_table_from_ray_results_and_a_result_line_cut_short(tmp_path, capsys):
    """Costs come from Ray's result.json (device_seconds per result); a line cut short by an interrupted
    write is skipped. The report's Cost table: per rung segment, per status and in total."""
    trials = synthetic_trials(distributions(tmp_path), lambda p: 30 * p["optim.momentum"], n=8)
    exp_dir = write_search(tmp_path, "cost", trials, journal=True, ray=True)
    for d in sorted(exp_dir.glob("run_trial_*")):
        rows = [json.loads(ln) for ln in (d / "result.json").read_text().splitlines()]
        (d / "result.json").write_text("".join(json.dumps({**r, "device_seconds": 2.0 * r["training_iteration"],
                                                           "device_kind": "cpu"}) + "\n" for r in rows)
                                       + '{"trial_id": "cut", "training_iter')        # interrupted write
    by_status = {"completed": 0.0, "early_stopped": 0.0, "failed": 0.0}
    name = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "early_stopped", TrialState.FAIL: "failed"}
    for t in trials:
        by_status[name[t["state"]]] += sum(2.0 * step for step in t["curve"])
    total = sum(by_status.values())
    first = 2.0 * len(trials)                                    # every trial paid for epoch 1
    found = locate(str(exp_dir))
    assert [(t.trial_id, t.curve) for t in found.trials] == [(t["id"], t["curve"]) for t in trials]
    assert sum(sum(t.cost.values()) for t in found.trials) == pytest.approx(total)
    assert {t.device_kind for t in found.trials} == {"cpu"}
    assert {r["trial"]: r["cost"] for r in found.leaderboard()} == \
           {t["id"]: sum(2.0 * step for step in t["curve"]) for t in trials}
    (exp_dir / "optuna_journal.log").rename(tmp_path / "journal.bak")      # rebuilt from the Ray results alone
    assert [(t.trial_id, t.curve, t.status) for t in locate(str(exp_dir)).trials] == \
           [(t.trial_id, t.curve, t.status) for t in found.trials]
    (tmp_path / "journal.bak").rename(exp_dir / "optuna_journal.log")

    assert report.main([str(exp_dir), "--out", str(tmp_path / "out"), "--no-mlflow"]) == 0
    page = parse_page(tmp_path / "out" / "report.html")
    cells = [c.strip() for c in page.text if c.strip()]
    at = cells.index("spent")
    table = cells[at:at + 3 + 6 * 3]
    assert table == ["spent", "CPU-seconds", "share",
                     "epoch 1", f"{first:.0f}", f"{100 * first / total:.0f}%",
                     "epochs 2-3", f"{total - first:.0f}", f"{100 * (total - first) / total:.0f}%",
                     "on completed trials", f"{by_status['completed']:.0f}",
                     f"{100 * by_status['completed'] / total:.0f}%",
                     "on early-stopped trials", f"{by_status['early_stopped']:.0f}",
                     f"{100 * by_status['early_stopped'] / total:.0f}%",
                     "on failed trials", f"{by_status['failed']:.0f}", f"{100 * by_status['failed'] / total:.0f}%",
                     "total", f"{total:.0f}", "100%"]


def test_find_search_edge_cases(tmp_path):
    """--space overrides the recorded space file; a missing space file or a corrupt state file is one
    SearchNotFound line saying what to do."""
    from hpo.results.handle import SearchNotFound

    trials = synthetic_trials(distributions(tmp_path), lambda p: 10 * p["optim.momentum"], n=6)
    exp_dir = write_search(tmp_path, "edge", trials, parent=False)
    recorded = Path(json.loads((exp_dir / STATE_FILE).read_text())["space"])
    copy = tmp_path / "copy.yaml"
    copy.write_text(recorded.read_text())
    recorded.unlink()                                        # moved or deleted since the search
    with pytest.raises(SearchNotFound, match=r"ctxtune_search.json.space: space file .*edge.yaml not found "
                                             r"\(pass --space SPACE.yaml\)"):
        locate(str(exp_dir))
    handle = locate("edge", str(tmp_path / "ray_results"), space=str(copy))
    assert handle.space_source == str(copy) and len(handle.trials) == 6
    with pytest.raises(SearchNotFound, match="--space: space file .*nowhere.yaml not found"):
        locate(str(exp_dir), space=str(tmp_path / "nowhere.yaml"))
    (exp_dir / STATE_FILE).write_text('["not", "a", "state"')
    with pytest.raises(SearchNotFound, match=r"ctxtune_search.json: not a ctxtune search state \(expected a JSON "
                                             r"object\)"):
        locate(str(exp_dir))


def test_leaderboard_and_promotion_agree_when_the_best_epoch_is_not_the_last(tmp_path):
    """Trial A peaks at epoch 2 and ends low; trial B ends highest: B is rank 1 for the leaderboard,
    best_config's rule and promotion alike (one definition of a trial's score)."""
    from hpo.execution.promotion import select_winners

    dists = distributions(tmp_path)
    trials = synthetic_trials(dists, lambda p: 10.0, n=3, n_failed=0)
    curves = ({1: 5.0, 2: 30.0, MAX_T: 12.0}, {1: 5.0, 2: 10.0, MAX_T: 20.0}, {1: 5.0, 2: 11.0, MAX_T: 15.0})
    for t, curve in zip(trials, curves):
        t["curve"], t["state"] = {e: curve.get(e, 8.0) for e in range(1, MAX_T + 1)}, TrialState.COMPLETE
    handle = locate(str(write_search(tmp_path, "peak", trials, parent=False)))
    rows = handle.leaderboard()
    assert [r["trial"] for r in rows] == [trials[1]["id"], trials[2]["id"], trials[0]["id"]]
    assert (rows[0]["score"], rows[2]["best"]) == (20.0, 30.0)          # A's best epoch shown, not ranked on
    winners, _ = select_winners(handle.trials, 3, handle.max_t, handle.mode)
    assert [w.trial_id for w in winners] == [r["trial"] for r in rows]
    printed = format_leaderboard(rows, list(KNOBS), "val_miou").splitlines()
    assert printed[0].split()[-5:] == ["val_miou", "best_epoch", "epochs", "device_s", "status"]
