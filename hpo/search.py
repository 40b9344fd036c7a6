"""`python -m hpo.search SPACE.yaml` — Ray Tune + Optuna sampler + ASHA, every trial in MLflow.

    python -m hpo.search search_spaces/demo.yaml                # local Ray, MLflow default store
    python -m hpo.search SPACE.yaml --dry-run                   # validate, show a few sampled configs
    python -m hpo.search SPACE.yaml --resume                    # continue an interrupted search
    python -m hpo.search SPACE.yaml --address ray://head:10001  # join a Ray cluster

Bad input (unknown key, bad range, missing file, structural impossibility) is one line on stderr
and exit code 2, before Ray starts. The work is done by `hpo.execution.runner.run_search`.
"""

from __future__ import annotations

import argparse
import os
import sys

from datasets.errors import DatasetError
from hpo.config import ConfigError
from hpo.tuning.space import SpaceError, SpaceFile, load_space, warn_if_from_scratch

# command-line flag -> the space-file key it overrides (validated with the rest of the file)
OVERRIDES = {"name": "experiment.name", "num_samples": "search.num_samples",
             "tracking_uri": "experiment.tracking_uri", "storage_path": "experiment.storage_path"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpo.search", description=__doc__.split("\n\n")[0])
    p.add_argument("space", help="search-space YAML file")
    p.add_argument("--address", help="Ray cluster address to join (default: start a local Ray)")
    p.add_argument("--num-samples", type=int, help="override search.num_samples")
    p.add_argument("--name", help="override experiment.name")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search of this name")
    p.add_argument("--dry-run", action="store_true", help="validate, print the space and sampled configs, exit")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: experiment.tracking_uri or MLflow's)")
    p.add_argument("--storage-path", help="Ray results directory (default: experiment.storage_path)")
    p.add_argument("--no-report", action="store_true", help="skip the sensitivity report at the end")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> SpaceFile:
    """The space file with the command line's overrides, validated as one."""
    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items() if getattr(args, flag) is not None}
    try:
        spec = load_space(args.space, overrides)
    except SpaceError as err:
        flag = next((f for f, key in OVERRIDES.items() if key in overrides and str(err).startswith(key + ":")), None)
        if flag:      # say which flag set the bad value
            raise SpaceError(f"--{flag.replace('_', '-')} ({err})") from None
        raise
    warn_if_from_scratch(spec.base)          # depth >= 50 with pretrained: null -> one loud line
    return spec


def main(argv=None) -> int:
    from hpo.execution.runner import dry_run, run_search

    args = parse_args(argv)
    try:
        spec = prepare(args)
        if args.dry_run:
            dry_run(spec)
            return 0
        return run_search(spec, space_path=args.space, resume=args.resume, address=args.address,
                          report=not args.no_report, resume_hint=f" --name {args.name}" if args.name else "")
    except (SpaceError, ConfigError, DatasetError) as err:     # datasets/models raise one-line errors
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    sys.exit(main())
