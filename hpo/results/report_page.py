"""The sensitivity report of a search: figures, report.html, a copy on the MLflow parent run.

`write_report(handle)` (called at the end of every search, and by `python -m hpo.report`) writes:
- knob importance from Optuna's PED-ANOVA (Optuna 5's default) and fANOVA evaluators, over the
  full-budget trials and, separately, over the trials that reached each ASHA rung, so a ranking
  that changes between short and long training shows up (hpo.results.sensitivity);
- slice plots (score vs each knob; early-stopped trials hollow orange), a parallel-coordinate plot
  (Optuna's; early-stopped dotted), learning curves coloured by status with the rung boundaries,
  the rung self-check table, the leaderboard and the best trials' per-class IoU (the dataset's class
  names and palette);
- `report.html` (self-contained, figures embedded as base64 PNG) plus the PNGs, into `out`
  (default `<ray results>/report/`), logged to the search's MLflow parent run under `report/`, so
  it opens from `mlflow ui`.
Too few trials for importance still gives a report that says why.
"""

from __future__ import annotations

import base64
import html
import sys
import warnings
from pathlib import Path

import optuna

from hpo.config import display_value
from hpo.results.ledger import ledger
from hpo.tuning.calibration import read_rung_stats
from hpo.tuning.rung_check import LOW, verdict
from hpo.results.handle import SearchHandle
from hpo.results.sensitivity import (EVALUATORS, display_distributions, finished_study, importance_table,
                             rung_correlations)
from hpo.tuning.space import rung_milestones

STATUS_COLOURS = {"completed": "tab:green", "early_stopped": "tab:orange", "failed": "tab:red",
                  "unfinished": "tab:gray"}
FIGURES = ("importance", "slice", "parallel_coordinate", "learning_curves")


# --- figures ------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _optuna_quiet():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def plot_importance(search: SearchHandle, table: dict, path: Path) -> bool:
    """Grouped bars: one panel per evaluator, one bar per stage for every knob."""
    plt = _plt()
    done = [label for label, row in table.items() if row[EVALUATORS[0]] is not None]
    if not done:
        return False
    # knob order: by the deepest stage that has importances (full budget when available)
    ref = table[done[-1]][EVALUATORS[0]]
    knobs = sorted(search.spec.space, key=lambda k: -ref.get(k, 0.0))
    n, width = len(done), 0.8 / len(done)
    cmap = plt.get_cmap("viridis")
    height = 0.9 + 0.55 * len(knobs) * max(1, n / 2)
    fig, axes = plt.subplots(1, len(EVALUATORS), figsize=(5.2 * len(EVALUATORS), height), sharey=True,
                             squeeze=False)
    for ax, ev in zip(axes[0], EVALUATORS):
        for i, label in enumerate(done):
            vals = [table[label][ev].get(k, 0.0) for k in knobs]
            ys = [y - 0.4 + width * (i + 0.5) for y in range(len(knobs))]
            ax.barh(ys, vals, height=width, color=cmap(i / max(n - 1, 1) * 0.85),
                    label=f"{label} (n={table[label]['n']})")
        ax.set_yticks(range(len(knobs)), knobs)
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (normalised, sums to 1)")
        ax.set_title(ev)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()   # most important knob on top (the y axis is shared: invert once)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    skipped = [f"{label}: {row['reason']}" for label, row in table.items() if row[EVALUATORS[0]] is None]
    title = f"Knob importance for {search.metric} — '{search.name}'"
    if skipped:
        title += "\nno importance for " + "; ".join(skipped)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def choice_labels(choices, width: int = 10) -> tuple[list[str], str]:
    """Tick labels of a categorical knob and, when any choice is longer than `width` characters (lists
    such as dilation grids, which overlap as ticks), short ticks #0, #1, ... and one line per choice
    spelling them out ("" otherwise)."""
    import textwrap

    text = [str(c) for c in choices]
    if max(len(t) for t in text) <= width:
        return text, ""
    return ([f"#{i}" for i in range(len(text))],
            "\n".join(textwrap.shorten(f"#{i} = {t}", 60, placeholder=" ...") for i, t in enumerate(text)))


def plot_slice(search: SearchHandle, path: Path) -> tuple[bool, str | None]:
    """Score at each finished trial's last validation against each knob: full-budget trials coloured
    by trial order, early-stopped ones hollow orange (their score is at a shorter budget)."""
    plt = _plt()
    import matplotlib.ticker
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D

    finished = [t for t in search.trials if t.status in ("completed", "early_stopped")
                and t.last_value is not None and np.isfinite(t.last_value)]
    if not finished:
        return False, "no finished trial has a score"
    dists = display_distributions(search.spec)
    knobs = list(dists)
    blues = ListedColormap(plt.get_cmap("Blues")(np.linspace(0.35, 1.0, 256)))   # Blues starts at white
    fig, axes = plt.subplots(1, len(knobs), figsize=(max(6.0, 3.4 * len(knobs)), 4.2), sharey=True, squeeze=False)
    full = [t for t in finished if t.status == "completed"]
    order = {t.trial_id: i for i, t in enumerate(full)}
    scatter, key_lines = None, 0
    for ax, knob in zip(axes[0], knobs):
        dist = dists[knob]
        categorical = isinstance(dist, optuna.distributions.CategoricalDistribution)

        def x_of(trials):
            values = [display_value(t.params.get(knob)) for t in trials]
            return [dist.choices.index(v) if categorical and v in dist.choices else v for v in values]
        early = [t for t in finished if t.status == "early_stopped" and knob in t.params]
        if early:
            ax.scatter(x_of(early), [t.last_value for t in early], facecolors="none", linewidths=1.3,
                       edgecolors=STATUS_COLOURS["early_stopped"], s=36, zorder=2)
        shown = [t for t in full if knob in t.params]
        if shown:
            scatter = ax.scatter(x_of(shown), [t.last_value for t in shown], c=[order[t.trial_id] for t in shown],
                                 cmap=blues, vmin=0, vmax=max(len(full) - 1, 1), s=36, edgecolors="0.3",
                                 linewidths=0.5, zorder=3)
        if categorical:
            labels, key = choice_labels(dist.choices)
            ax.set_xticks(range(len(dist.choices)), labels, fontsize=8)
            if key:     # long choices (dilation grids, lists): short ticks, the values spelled out below
                ax.text(0.0, -0.2, key, transform=ax.transAxes, va="top", ha="left", fontsize=7)
                key_lines = max(key_lines, len(dist.choices))
        elif getattr(dist, "log", False):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(knob)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{search.metric} (last validation)")
    if scatter is not None:
        fig.colorbar(scatter, ax=list(axes[0]), pad=0.02).set_label("trial order (full budget)")
    fig.suptitle(f"Slice plot — '{search.name}' ({len(finished)} finished trials)")
    handles = [Line2D([], [], marker="o", ls="", color="#4a7fb5", label="full budget (colour = trial order)")]
    if any(t.status == "early_stopped" for t in finished):
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", color=STATUS_COLOURS["early_stopped"],
                              label="early-stopped (score at the epoch it stopped)"))
    below = 0.0 if not key_lines else -0.06 - 0.035 * key_lines        # under the choices' key, if any
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, below), ncol=2, frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True, None


def plot_parallel(search: SearchHandle, path: Path) -> tuple[bool, str | None]:
    plt = _plt()
    import matplotlib
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    study = finished_study(search)
    if len(study.trials) < 2:
        return False, f"{len(study.trials)} finished trial(s); a parallel-coordinate plot needs 2"
    with matplotlib.rc_context():
        ax = plot_parallel_coordinate(study, target_name=search.metric)
        _relabel_constraint_legend(ax)
        fig = ax.figure
        fig.set_size_inches(max(7.0, 1.6 * len(search.spec.space) + 2), 4.6)
        ax.set_title("")
        fig.suptitle(f"Parallel coordinates — '{search.name}' (score at each trial's last validation)",
                     fontsize=10, y=1.04)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return True, None


def _relabel_constraint_legend(ax) -> None:
    """Optuna (4.x-5.x) labels the `early_stopped` constraint of finished_study "Feasible" /
    "Infeasible" in the parallel-coordinate legend; say what it means here. The legend texts are
    the one thing of Optuna's figure this relies on; unknown texts are left as they are."""
    legend = ax.get_legend()
    for text in legend.get_texts() if legend is not None else []:
        text.set_text({"Feasible": "full budget", "Infeasible": "early-stopped"}.get(text.get_text(), text.get_text()))


def plot_learning_curves(search: SearchHandle, path: Path) -> tuple[bool, str | None]:
    plt = _plt()
    from matplotlib.lines import Line2D

    curves = [t for t in search.trials if t.curve]
    if not curves:
        return False, "no trial reported a validation"
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for t in curves:
        steps = sorted(t.curve)
        colour = STATUS_COLOURS.get(t.status, "tab:gray")
        ax.plot(steps, [t.curve[s] for s in steps], marker="o", ms=3, lw=1.3, color=colour, alpha=0.8)
        if t.status == "failed":
            ax.plot(steps[-1], t.curve[steps[-1]], marker="x", ms=9, color=colour)
    for i, step in enumerate(rung_milestones(search.spec)):
        ax.axvline(step, color="0.4", ls="--", lw=0.9)
        ax.annotate(f"rung {i + 1}", (step, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="0.3")
    ax.axvline(search.max_t, color="0.2", ls=":", lw=0.9)
    counts = search.counts()
    ax.legend(handles=[Line2D([], [], color=c, marker="o", ms=3, label=f"{s.replace('_', '-')} ({counts[s]})")
                       for s, c in STATUS_COLOURS.items() if counts[s]], fontsize=8, loc="lower right")
    unit = "epoch" if search.spec.base["budget"].get("val_every", 1) == 1 else "validation"
    ax.set_xlabel(f"{unit} (dashed: ASHA rungs, dotted: full budget)")
    ax.set_ylabel(search.metric)
    ax.set_xticks(range(1, search.max_t + 1))
    ax.set_title(f"Learning curves — '{search.name}'")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True, None


# --- leaderboard and HTML -----------------------------------------------------------------------

def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def per_class_html(search: SearchHandle, top: int = 3) -> str | None:
    """Per-class IoU (`iou_<class>` of the final evaluation) of the best full-budget trials, in the
    dataset's class order with its palette colours; None when no trial logged them."""
    from datasets import label_space

    if search.client is None:
        return None
    names, palette = label_space(search.spec.base)
    run_of = {t.trial_id: t.run_id for t in search.trials}
    cols = []
    for row in search.leaderboard():
        if row["status"] != "completed" or not run_of.get(row["trial"]) or len(cols) == top:
            continue
        try:
            metrics = search.client.get_run(run_of[row["trial"]]).data.metrics
        except Exception:  # noqa: BLE001 - a store out of reach: the table is left out
            return None
        if any(f"iou_{n}" in metrics for n in names):
            cols.append((row["rank"], row["trial"], metrics))
    if not cols:
        return None
    head = "<th>class</th>" + "".join(f"<th>#{rank} {html.escape(trial)}</th>" for rank, trial, _ in cols)
    body = ""
    for name, colour in zip(names, palette):
        swatch = (f"<span style='display:inline-block;width:.9em;height:.9em;margin-right:.4em;"
                  f"background:rgb({int(colour[0])},{int(colour[1])},{int(colour[2])})'></span>")
        cells = "".join(f"<td>{m[f'iou_{name}']:.2f}</td>" if f"iou_{name}" in m else "<td>–</td>" for _, _, m in cols)
        body += f"<tr><td style='text-align:left'>{swatch}{html.escape(name)}</td>{cells}</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.note{color:#8a4b00;background:#fff6e5;padding:.4em .8em}
code{background:#f4f4f4;padding:0 3px}"""


def render_html(search: SearchHandle, table: dict, figures: dict[str, Path], missing: dict[str, str]) -> str:
    s, c = search.spec, search.counts()
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ctxtune report — {html.escape(search.name)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Knob sensitivity — search '{html.escape(search.name)}'</h1>",
             f"<p>{len(search.trials)} trials: {c['completed']} at full budget ({s.scheduler.max_t} validations), "
             f"{c['early_stopped']} early-stopped, {c['failed']} failed"
             + (f", {c['unfinished']} unfinished" if c["unfinished"] else "")
             + f". Metric <code>{html.escape(search.metric)}</code> ({s.scheduler.mode}); sampler "
             f"{s.search.sampler}, scheduler {s.scheduler.name}"
             + (f" (rungs at {', '.join(map(str, rungs))})" if (rungs := rung_milestones(s)) else "")
             + f". Trials rebuilt from the {html.escape(search.source)}.</p>"]
    for note in search.notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")

    parts.append("<h2>Knob importance</h2><p>Optuna's PED-ANOVA (default evaluator in Optuna 5: which knob "
                 "values the best trials share) and fANOVA (variance of the score explained by each knob), "
                 "computed over the full-budget trials and over the trials that reached each ASHA rung, "
                 "scored at that rung. A knob whose rank changes between rungs and the full budget "
                 "behaves differently in short and long training.</p>")
    for label, row in table.items():
        if row["reason"]:
            parts.append(f"<p class='note'>No importance for {html.escape(label)}: {html.escape(row['reason'])}.</p>")
    if "importance" in figures:
        parts.append(_img(figures["importance"], "knob importance"))
    done = [label for label, row in table.items() if row[EVALUATORS[0]] is not None]
    if done:
        for ev in EVALUATORS:
            rows = []
            for knob in s.space:
                cells = [knob]
                for label in done:
                    imp = table[label][ev]
                    rank = list(imp).index(knob) + 1 if knob in imp else None
                    cells.append(f"{imp.get(knob, 0.0):.3f} (#{rank})" if rank else "–")
                rows.append(cells)
            rows.sort(key=lambda r: float(r[-1].split()[0]) if r[-1] != "–" else 0.0, reverse=True)
            parts.append(f"<h3>{ev}</h3>" + _table(["knob", *[f"{lb} (n={table[lb]['n']})" for lb in done]], rows))

    corr = rung_correlations(search)
    if corr:
        unit = "epoch" if s.base["budget"].get("val_every", 1) == 1 else "validation"
        parts.append("<h2>Can early stopping be trusted here?</h2><p>Spearman rank correlation between the "
                     "scores at each ASHA rung and at the next milestone, over the trials that reached both. "
                     f"ASHA's stops are only sound when early scores rank configs as later ones do "
                     f"(below {LOW} a simulation found ASHA no better than random search).</p>")
        parts.append(_table([f"rung ({unit})", f"next ({unit})", "Spearman rho", "trials"],
                            [[a, b, "–" if rho != rho else f"{rho:.2f}", n] for a, b, rho, n in corr]))
        for a, b, rho, n in corr:
            parts.append(f"<p class='note'>{html.escape(verdict(a, b, rho, n, search.max_t, unit))}</p>")
    calibration = read_rung_stats(search.exp_dir) if search.exp_dir else {}
    if calibration:
        parts.append("<h2>What calibrated early stopping did</h2><p>At each rung it cuts only on a signal whose "
                     "rank correlation with the final score (over the trials that ran the full budget; "
                     "leave-one-out for the prediction) has a lower confidence bound above "
                     f"scheduler.calibration.rho_min, and only trials whose optimistic predicted final is below the "
                     f"best final so far (hpo.tuning.calibrated).</p>")
        parts.append(_table(["rung", "mode", "rho(raw, final) [bound]", "rho(predicted, final) [bound]",
                             "full curves", "cut", "went on"],
                            [[r, st.mode, f"{st.rho_raw:.2f} [{st.lb_raw:.2f}]", f"{st.rho_pred:.2f} [{st.lb_pred:.2f}]",
                              st.n, st.cut, st.kept] for r, st in sorted(calibration.items())]))

    book = ledger(search.trials, rung_milestones(s) + [search.max_t])
    if book.trials:
        parts.append(f"<h2>Cost</h2><p>{book.unit}-time the trials held (hpo.results.ledger: wall time x devices "
                     f"held). {html.escape(book.lines()[0])}.</p>")
        rows = [[label, f"{sec:.0f}", f"{100 * sec / book.total:.0f}%" if book.total else "–"]
                for label, sec in book.segments]
        rows += [[f"on {st.replace('_', '-')} trials", f"{book.by_status.get(st, 0.0):.0f}",
                  f"{100 * book.share(st):.0f}%"] for st in ("completed", "early_stopped", "failed")]
        rows.append(["total", f"{book.total:.0f}", "100%"])
        parts.append(_table(["spent", f"{book.unit}-seconds", "share"], rows))
        if book.full_trainings:
            parts.append(f"<p>One full-budget trial cost {book.full_training:.0f} {book.unit}-seconds on average; "
                         f"the search cost {book.full_trainings:.1f}x that.</p>")

    for key, title in (("slice", "Slice plots"), ("parallel_coordinate", "Parallel coordinates"),
                       ("learning_curves", "Learning curves")):
        parts.append(f"<h2>{title}</h2>")
        if key in figures:
            parts.append(_img(figures[key], title))
        else:
            parts.append(f"<p class='note'>Not drawn: {html.escape(missing.get(key, 'no data'))}.</p>")

    parts.append("<h2>Leaderboard</h2><p>Ranked by the score at the full budget (what ASHA, the Optuna study and "
                 "promotion compare); early-stopped trials after them, by their last score (at a shorter budget). "
                 "The best epoch's score is shown beside it, not ranked on.</p>")
    keys = list(s.space)
    rows = [[r["rank"], r["trial"], *[r[k] for k in keys], r["score"], r["best"], r["epochs"],
             None if r["cost"] is None else round(r["cost"]), r["status"].replace("_", "-")] for r in search.leaderboard()]
    parts.append(_table(["rank", "trial", *keys, search.metric, f"best-epoch {search.metric}", "epochs",
                         f"{book.unit}-seconds", "status"], rows))
    classes = per_class_html(search)
    if classes:
        parts.append("<h2>Per-class IoU</h2><p>The final evaluation of the best full-budget trials, per class "
                     "of the dataset (<code>iou_&lt;class&gt;</code> on each trial's MLflow run; "
                     "– : the class is absent from the val split and never predicted).</p>" + classes)
    parts.append("</body></html>")
    return "\n".join(parts)


# --- the report --------------------------------------------------------------------------------

def build(search: SearchHandle, out: Path, min_trials: int = 5, ped_target_quantile: float | None = None) -> dict:
    """Write the PNGs and report.html into `out`; returns what was made and what is missing."""
    _optuna_quiet()
    out.mkdir(parents=True, exist_ok=True)
    table = importance_table(search, min_trials, ped_target_quantile)
    figures: dict[str, Path] = {}
    missing: dict[str, str] = {}
    if plot_importance(search, table, out / "importance.png"):
        figures["importance"] = out / "importance.png"
    for key, fn in (("slice", plot_slice), ("parallel_coordinate", plot_parallel),
                    ("learning_curves", plot_learning_curves)):
        ok, why = fn(search, out / f"{key}.png")
        if ok:
            figures[key] = out / f"{key}.png"
        else:
            missing[key] = why
    page = out / "report.html"
    page.write_text(render_html(search, table, figures, missing), encoding="utf-8")
    return {"html": page, "figures": figures, "missing": missing, "importance": table}


def log_to_mlflow(search: SearchHandle, made: dict) -> str | None:
    """Log report.html and the PNGs under report/ of the parent run; returns the run id or None."""
    if not search.parent_run_id or not search.tracking_uri:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=search.tracking_uri)
    for path in [made["html"], *made["figures"].values()]:
        client.log_artifact(search.parent_run_id, str(path), "report")
    return search.parent_run_id


def _summary_lines(search: SearchHandle, made: dict) -> list[str]:
    c = search.counts()
    lines = [f"report '{search.name}': {len(search.trials)} trials ({c['completed']} full budget, "
             f"{c['early_stopped']} early-stopped, {c['failed']} failed) from the {search.source}"]
    lines += [verdict(a, b, rho, n, search.max_t) for a, b, rho, n in rung_correlations(search)]
    if search.exp_dir:
        lines += [st.line(r) for r, st in sorted(read_rung_stats(search.exp_dir).items())]
    for label, row in made["importance"].items():
        if row["reason"]:
            lines.append(f"importance missing for {label}: {row['reason']}")
        else:
            for ev in EVALUATORS:
                ranked = " > ".join(f"{k} {v:.2f}" for k, v in list(row[ev].items())[:4])
                lines.append(f"importance {ev} {label} (n={row['n']}): {ranked}")
    return lines


def write_report(search: SearchHandle, out: Path | None = None, min_trials: int = 5,
                 ped_target_quantile: float | None = None, log_mlflow: bool = True) -> dict:
    """Build the report into `out` (default `<ray results>/report`, else `./report-<name>`), print its
    summary, copy it to the MLflow parent run; returns what `build` made."""
    if out is None:
        out = search.exp_dir / "report" if search.exp_dir is not None else Path(f"report-{search.name}")
    made = build(search, Path(out), min_trials, ped_target_quantile)
    for line in _summary_lines(search, made):
        print(line)
    where = f"wrote {made['html']} (+{len(made['figures'])} PNGs)"
    if log_mlflow:
        try:
            run_id = log_to_mlflow(search, made)
            if run_id:
                where += f"; logged under report/ of MLflow run {run_id} ({search.tracking_uri})"
        except Exception as exc:  # noqa: BLE001 - the files on disk are the report; MLflow is a copy
            print(f"warning: could not log the report to MLflow ({type(exc).__name__}: {exc})", file=sys.stderr)
    print(where)
    return made
