"""A search's leaderboard as text: the aligned table the search prints at its end and the CSV it
logs to the MLflow parent run (rows: hpo.results.handle.SearchHandle.leaderboard()).

Room `hpo.results`: a finished search, read back without Ray; never imports Ray.
"""

from __future__ import annotations

import csv
import io


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def format_leaderboard(rows: list[dict], keys: list[str], metric: str, device_kind: str = "device") -> str:
    cost = f"{device_kind}_s"
    cols = ["rank", "trial", *keys, metric, "best_epoch", "epochs", cost, "status"]
    shown = [{**r, metric: f"{r['score']:.2f}" if r["score"] is not None else None,
              "best_epoch": f"{r['best']:.2f}" if r["best"] is not None else None,
              cost: f"{r['cost']:.0f}" if r.get("cost") is not None else None} for r in rows]
    return aligned([cols] + [[_cell(r.get(c)) for c in cols] for r in shown])


def aligned(cells: list[list[str]]) -> str:
    """Rows of text cells as left-aligned columns (the printed leaderboards)."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells)


def leaderboard_csv(rows: list[dict], keys: list[str], metric: str, device_kind: str = "device") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["rank", "trial", *keys, metric, f"best_epoch_{metric}", "epochs", f"{device_kind}_seconds",
                     "status"])
    for r in rows:
        writer.writerow([r["rank"], r["trial"], *[r[k] for k in keys], r["score"], r["best"], r["epochs"],
                         r.get("cost"), r["status"]])
    return buf.getvalue()
