"""`python -m hpo.train CONFIG.yaml` — one full training run with the shared trainer, tracked in MLflow.

    python -m hpo.train search_spaces/configs/msglore_toy.yaml --out runs/msglore_toy
    python -m hpo.train CONFIG.yaml --out runs/x --resume        # continue from runs/x/last.pt
    python -m hpo.train CONFIG.yaml --register my-model          # + a version in the Model Registry

The output folder (`--out`, default `runs/<config name>`) is hpo.training.run's (last.pt,
metrics.json, config.yaml, model/, confusion.png, overlays/, done.json) plus `mlflow_run.json`, the
MLflow run id, so `--resume` continues the same run (hpo.tracking.train_tracker; `--resume` reuses
the URI stored there unless given another). Against a tracking server MLflow's HTTP retries are
lowered (2 retries, 30 s timeout, unless set in the environment): logging happens in the training
process and must not stall it; any tracking failure is one warning and the training goes on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpo.config import ConfigError, load_run_config, normalize
from hpo.tracking.train_tracker import DEFAULT_EXPERIMENT


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m hpo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="run config YAML")
    p.add_argument("--out", help="output directory (default: runs/<config name>)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--epochs", type=int, help="override the config's budget.epochs (a short run without editing YAML)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt and its MLflow run")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's, sqlite mlflow.db here)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    p.add_argument("--register", metavar="NAME", help="register the final weights as a version of model NAME")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from datasets import preflight
    from hpo.tracking.store import fail_fast_http
    from hpo.tracking.train_tracker import RunTracker
    from hpo.training.outputs import per_class_lines
    from hpo.training.run import CHECKPOINT, DONE, METRICS, read_done, train
    from hpo.training.trainer import DivergenceError

    args = parse_args(argv)
    fail_fast_http(retries=2, timeout_s=30)   # a training process can afford a little patience
    try:
        cfg = load_run_config(args.config)
        if args.seed is not None:
            cfg["seed"] = args.seed
        if args.epochs is not None:
            if args.epochs < 1:
                raise ConfigError(f"--epochs: expected a whole number >= 1, got {args.epochs}")
            cfg.setdefault("budget", {})["epochs"] = args.epochs
        cfg = normalize(cfg)
        preflight(cfg)                  # a folder dataset's files, before an MLflow run exists
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        if args.resume and read_done(out) is not None:
            print(f"{out}: this run already finished (remove {out / DONE} to evaluate again)")
            return 0
        if args.resume and not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: no checkpoint at {out / CHECKPOINT}")
        tracker = RunTracker(args.tracking_uri)
        tracker.start(out, cfg, experiment=args.experiment, run_name=Path(args.config).stem,
                      tags={"ctxtune.config": str(Path(args.config).resolve())}, resume=args.resume)
        if tracker.run_id:
            print(f"MLflow run {tracker.run_id} ({tracker.uri})", flush=True)
        try:
            summary = train(cfg, out, resume=args.resume, log=lambda msg: print(msg, flush=True),
                            on_validation=tracker.log_epoch)
        except Exception as exc:
            tracker.fail(f"{type(exc).__name__}: {exc}")
            raise
    except DivergenceError as err:
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 1
    except ValueError as err:    # ConfigError / DatasetError: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    tracker.finish(out, summary, files=("config.yaml", METRICS))
    final = summary["final"]
    print(f"final val mIoU {final['val_miou']:.2f}{' (TTA)' if final['tta'] else ''}  "
          f"({summary['wall_seconds']:.0f} s); outputs in {out}")
    print(per_class_lines(summary["per_class_iou"]))
    if args.register:
        version = tracker.register(args.register, {"config": str(args.config)})
        if version:
            print(f"registered as version {version} of model '{args.register}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
