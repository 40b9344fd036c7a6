"""`python -m hpo.report SEARCH` — which knobs mattered in a finished search.

    python -m hpo.report demo                          # a search name under ./ray_results
    python -m hpo.report ray_results/demo --out rep/   # a Ray results directory
    python -m hpo.report 3f2a...c9 --tracking-uri sqlite:///mlflow.db   # an MLflow parent run id

The report (also written automatically at the end of `python -m hpo.search`) is described in
hpo.results.report_page. An unknown SEARCH is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpo.tracking.store import fail_fast_http
from hpo.results.handle import SearchNotFound, find_search


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpo.report", description=__doc__.split("\n\n")[0])
    p.add_argument("search", metavar="SEARCH",
                   help="search name (under --storage-path), Ray results directory, or MLflow parent run id")
    p.add_argument("--out", help="output directory (default: <ray results>/report, or ./report-<name>)")
    p.add_argument("--storage-path", help="Ray results directory holding searches (default ./ray_results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the search's, else MLflow's default)")
    p.add_argument("--space", help="space file, when the results do not record where theirs is")
    p.add_argument("--min-trials", type=int, default=5,
                   help="fewest scored trials per stage for importance (default 5)")
    p.add_argument("--ped-quantile", type=float,
                   help="PED-ANOVA target quantile (default min(0.5, max(0.1, 10/n)) for n trials)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to the MLflow parent run")
    args = p.parse_args(argv)
    if args.min_trials < 2:
        p.error("--min-trials: expected >= 2")
    if args.ped_quantile is not None and not 0 < args.ped_quantile < 1:
        p.error("--ped-quantile: expected a number in (0, 1)")
    return args


def main(argv=None) -> int:
    from hpo.results.report_page import write_report

    args = parse_args(argv)
    fail_fast_http()   # an unreachable tracking server costs seconds, as in hpo.search
    try:
        search = find_search(args.search, args.storage_path, args.tracking_uri, args.space)
    except SearchNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_report(search, Path(args.out) if args.out else None, args.min_trials, args.ped_quantile,
                 log_mlflow=not args.no_mlflow)
    return 0


if __name__ == "__main__":
    sys.exit(main())
