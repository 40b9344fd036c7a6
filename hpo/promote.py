"""`python -m hpo.promote SEARCH` — re-train a search's winners at full budget over seeds, register the champion.

    python -m hpo.promote demo                         # search name under ./ray_results
    python -m hpo.promote demo --top-k 3 --seeds 3     # 3 winners x 3 seeds = 9 trainings
    python -m hpo.promote 4f1c...e2                    # the search's MLflow parent run id
    python -m hpo.promote ray_results/demo --address ray://head:10001
    python -m hpo.promote demo --space edited.yaml     # another promote section than the one that ran

What it does and the choices behind it: hpo.execution.promotion. Bad input is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from hpo.config import ConfigError
from hpo.tracking.store import fail_fast_http
from hpo.execution.promotion import PromoteError, promote
from hpo.results.handle import SearchNotFound, find_search
from hpo.tuning.space import SpaceError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpo.promote", description=__doc__.split("\n\n")[0])
    p.add_argument("search", help="search name, its MLflow parent run id, or its Ray results folder")
    p.add_argument("--top-k", type=int, default=3, help="how many winners to re-train (default 3)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per winner (default 2)")
    p.add_argument("--address", help="Ray cluster address to join (default: start a local Ray)")
    p.add_argument("--storage-path", help="Ray results directory of the search (default ./ray_results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the search used)")
    p.add_argument("--space", help="space file to take the promote section from (default: the one that ran)")
    p.add_argument("--out", default="winners", help="output root; runs go to <out>/<search>/ (default winners)")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k: expected >= 1")
    if args.seeds < 1:
        p.error("--seeds: expected >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    fail_fast_http()     # the driver loop must keep going through a tracking outage
    try:
        handle = find_search(args.search, args.storage_path, args.tracking_uri, args.space)
        return promote(handle, top_k=args.top_k, seeds=args.seeds, out=args.out, address=args.address)
    except (SearchNotFound, PromoteError, SpaceError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
