"""`python -m hpo.replay`: a search in simulated time through the real searcher and scheduler.

    python -m hpo.replay                                   # the embedded curve table, the demo space's settings
    python -m hpo.replay --table my_curves.npz --trust raw # any curve table (docs/replay.md), plain ASHA
    python -m hpo.replay SEARCH                            # a finished search's own logged curves
    python -m hpo.replay SEARCH --sampler random --grace 2 # "would this have found my winner cheaper?"
    python -m hpo.replay SEARCH --prior-share 0            # the same search without sampling around its defaults

The library: hpo.simulation (curves.py: the sources; simulator.py: the replay and its choices).
Without a search or `--table`, the table shipped with the repository
(benchmarks/tables/msglore_toy_curves.npz) under the demo space's settings, with a budget of
`TABLE_BUDGET` full trainings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpo.simulation.curves import ReplayError, from_search, from_table
from hpo.simulation.simulator import TABLE_BUDGET, ReplaySettings, replay, summary, table_settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TABLE = REPO / "benchmarks" / "tables" / "msglore_toy_curves.npz"
DEMO_SPACE = REPO / "search_spaces" / "demo.yaml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpo.replay", description=__doc__.splitlines()[0])
    p.add_argument("search", nargs="?", help="a finished search (name, Ray results dir or MLflow parent run id); "
                                             "default: a curve table")
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="a curve table (docs/replay.md)")
    p.add_argument("--schedule", help="table only: the LR schedule's curves (default: the table's first)")
    p.add_argument("--annealed", action="store_true", help="table only: rungs see annealed-evaluation scores")
    p.add_argument("--space", type=Path, default=DEMO_SPACE,
                   help="table only: whose search and scheduler settings to replay (default: the demo space)")
    p.add_argument("--sampler", choices=["tpe", "random", "cmaes", "gp", "nsga2"])
    p.add_argument("--seed", type=int, help="search seed (default: the space's own)")
    p.add_argument("--scheduler", choices=["asha", "none"])
    p.add_argument("--trust", choices=["calibrated", "raw"], help="ASHA: calibrated early stopping or plain ASHA")
    p.add_argument("--grace", type=int, help="ASHA grace period (validations)")
    p.add_argument("--rf", type=float, help="ASHA reduction factor")
    p.add_argument("--brackets", type=int, help="ASHA brackets (Hyperband-style, trust raw)")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--num-samples", type=int)
    p.add_argument("--budget-epochs", type=int, help="stop after this many epochs in all")
    p.add_argument("--feedback", choices=["pruned", "complete"])
    p.add_argument("--diverged-feedback", choices=["pruned", "worst", "fail"])
    p.add_argument("--prior-share", type=float, help="share of trials drawn around the knobs' defaults (0 = off)")
    p.add_argument("--storage-path", help="where the search's Ray results are (default ./ray_results)")
    p.add_argument("--tracking-uri")
    args = p.parse_args(argv)
    try:
        if args.search:
            from hpo.results.handle import SearchNotFound, find_search

            try:
                found = find_search(args.search, args.storage_path, args.tracking_uri)
            except SearchNotFound as err:
                raise ReplayError(str(err)) from None
            source = from_search(found)
            # as many trials as the search ran (a stop rule or an interrupt may have ended it early)
            settings = ReplaySettings.from_space(found.spec, num_samples=len(source.params))
        else:
            from hpo.tuning.space import SpaceError

            source = from_table(args.table, args.schedule, args.annealed)
            try:
                settings = table_settings(source, args.space, TABLE_BUDGET)
            except SpaceError as err:
                raise ReplayError(str(err)) from None
        for flag, attr in [("sampler", "sampler"), ("scheduler", "scheduler"), ("trust", "trust"),
                           ("grace", "grace_period"), ("rf", "reduction_factor"), ("brackets", "brackets"),
                           ("max_concurrent", "max_concurrent"), ("feedback", "feedback"),
                           ("diverged_feedback", "diverged_feedback"), ("prior_share", "prior_share"),
                           ("seed", "seed")]:
            if getattr(args, flag) is not None:
                setattr(settings, attr, getattr(args, flag))
        if args.budget_epochs is not None:
            settings.budget_epochs, settings.num_samples = args.budget_epochs, None
        if args.num_samples is not None:
            settings.num_samples = args.num_samples
        print(summary(source, settings, replay(source, settings)))
    except ReplayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
