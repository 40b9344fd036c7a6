"""`python -m hpo.train CONFIG.yaml` — one full training run with the shared engine, tracked in MLflow.

    python -m hpo.train search_spaces/configs/msglore_toy.yaml --out runs/msglore_toy
    python -m hpo.train CONFIG.yaml --out runs/x --resume        # continue from runs/x/last.pt
    python -m hpo.train CONFIG.yaml --register my-model          # + a version in the Model Registry

Output directory (`--out`, default `runs/<config name>`):
    last.pt          engine state (model, optimizer, scheduler, RNG), written atomically
    metrics.json     per-validation history; at the end also the final evaluation
    config.yaml      the resolved run config (what `hpo.train` re-runs exactly)
    model/           weights.pt (a bare state_dict) + config.yaml: what the registry points at
    confusion.png    row-normalised confusion matrix of the final evaluation
    overlays/        prediction overlays of the final evaluation
    mlflow_run.json  the MLflow run id, so `--resume` continues the same run
    done.json        written last: the run finished (`--resume` then has nothing to do)

Choices:
- Checkpoints are taken after a validation whose epoch is a multiple of
  `runtime.checkpoint_every` (and after the last epoch): the engine hands control back only at
  validations. The engine replays epoch e's shuffle from `seed*1000 + e` and the checkpoint holds
  the RNG state, so a resumed run matches an uninterrupted one.
- The per-epoch `val_miou` curve is always single-scale; `eval.tta` (multi-scale + flip) applies
  to the final evaluation only, logged as `final_val_miou` (hpo/training/outputs.py, shared with promotion).
- MLflow is optional at run time: any tracking failure (store unreachable, MLflow not installed
  on a bare GPU box) prints one warning and the training goes on. Without `--tracking-uri` the
  store is MLflow's default (sqlite `mlflow.db` in the working directory; artifacts in
  `./mlruns`); `--resume` reuses the URI stored in `mlflow_run.json` unless given another.
- Against a tracking server, MLflow's HTTP retries are lowered (2 retries, 30 s timeout, unless
  set in the environment): logging happens in the training process and must not stall it.
- Registering logs no MLflow model flavour: the version's source is the run's `model/` artifact
  folder (weights + config), which works offline with any store.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from hpo.config import ConfigError, dump_yaml, flatten, load_run_config, normalize
from hpo.tracking.store import (fail_fast_http, get_or_create_experiment, log_params, register_model,
                              resolve_tracking_uri)
from hpo.training.outputs import (CONFUSION, MODEL_DIR, OVERLAYS, final_evaluation, final_metrics, per_class_lines,
                         write_final_outputs)

CHECKPOINT = "last.pt"
METRICS = "metrics.json"
DONE = "done.json"
RUN_FILE = "mlflow_run.json"
DEFAULT_EXPERIMENT = "ctxtune-train"
EPOCH_METRICS = ("train_loss", "val_miou", "val_pixel_acc", "lr", "epoch_seconds")


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


# --- files ----------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    """Readers (a rerun checking done.json, a user tailing metrics.json) never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_done(out: Path) -> dict | None:
    path = Path(out) / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def read_history(out: Path) -> list[dict]:
    path = Path(out) / METRICS
    try:
        return json.loads(path.read_text()).get("history", [])
    except (OSError, ValueError):
        return []


def ensure_data(cfg: dict) -> None:
    """The synthetic set is generated on first use (race-safe, several trainings may start at once);
    a folder dataset's files are checked (one line naming the file or key)."""
    from datasets import check_sample, preflight

    preflight(cfg)
    data = cfg["data"]
    if data["name"] == "synthetic" and data.get("generate"):
        from datasets.synthetic import ensure

        ensure(data["root"], **data["generate"])
    check_sample(cfg)          # a sample of files, and labels vs model.num_classes: one line, exit 2


# --- the training run -----------------------------------------------------------------------
def train(cfg: dict, out: Path, resume: bool = False, log: Callable[[str], None] = print,
          on_validation: Callable[[dict], None] | None = None) -> dict:
    """Train `cfg` into `out`; returns the summary also written to metrics.json and done.json.

    `on_validation(metrics)` is called after each validation, once the checkpoint of that epoch
    (if any) is on disk. No MLflow here: the caller tracks (main() through RunTracker).
    """
    from hpo.training.trainer import Trainer
    from models.backbone import scratch_warning

    cfg = normalize(cfg)
    warning = scratch_warning(cfg)      # depth >= 50 with pretrained: null: one loud line, then train
    if warning:
        print(warning, file=sys.stderr, flush=True)
    out = Path(out)
    ckpt = out / CHECKPOINT
    if resume and not ckpt.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt}")
    ensure_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE).unlink(missing_ok=True)          # not done until this run says so
    trainer = Trainer(cfg, log=log)
    history: list[dict] = []
    if resume:
        trainer.load(ckpt)
        history = [h for h in read_history(out) if h["epoch"] <= trainer.epoch]
        log(f"resumed from {ckpt} at epoch {trainer.epoch}")
    write_atomic(out / "config.yaml", dump_yaml(cfg))
    every, epochs = cfg["runtime"]["checkpoint_every"], cfg["budget"]["epochs"]
    last: dict[str, Any] = {}

    def after_validation(trainer, metrics, val):
        history.append(dict(metrics))
        last.update(val=val, epoch=trainer.epoch)
        write_atomic(out / METRICS, json.dumps({"history": history}, indent=1))
        saved = trainer.epoch % every == 0 or trainer.epoch == epochs
        if saved:
            trainer.save(ckpt)
        log(f"epoch {metrics['epoch']}/{epochs}  loss {metrics['train_loss']:.4f}  "
            f"val mIoU {metrics['val_miou']:.2f}  pixel acc {metrics['val_pixel_acc']:.2f}  "
            f"({metrics['epoch_seconds']:.1f} s){'  checkpoint saved' if saved else ''}")
        if on_validation:
            on_validation(dict(metrics))

    start = time.perf_counter()
    trainer.fit(after_validation)
    if trainer.epoch > 0 and not ckpt.is_file():
        trainer.save(ckpt)
    val = final_evaluation(trainer, last["val"] if last.get("epoch") == trainer.epoch else None)
    final = final_metrics(val, cfg["eval"]["tta"], trainer.epoch)
    summary = {"history": history, "final": final, "per_class_iou": val.per_class_iou,
               "class_names": list(trainer.data.class_names),
               "confusion": val.confusion.tolist() if val.confusion is not None else None,
               "wall_seconds": time.perf_counter() - start}
    write_final_outputs(trainer, cfg, val, out)
    write_atomic(out / METRICS, json.dumps(summary, indent=1))
    write_atomic(out / DONE, json.dumps({"final": final, "per_class_iou": val.per_class_iou,
                                         "wall_seconds": summary["wall_seconds"]}, indent=1))
    return summary


# --- MLflow ---------------------------------------------------------------------------------
class WarnOnce:
    """One tracking outage is one warning, not one per call."""

    def __init__(self, stream=None):
        self.stream, self.warned = stream, False

    def __call__(self, what: str, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            print(f"warning: MLflow {what} failed ({type(exc).__name__}: {str(exc)[:200]}); "
                  f"training goes on, tracking may be incomplete", file=self.stream or sys.stderr, flush=True)


class RunTracker:
    """One training run in MLflow. Every call is guarded: tracking trouble never stops a training."""

    def __init__(self, tracking_uri: str | None = None, warn: WarnOnce | None = None):
        self.warn = warn or WarnOnce()
        self.uri = tracking_uri
        self.client = None
        self.run_id: str | None = None
        self.logged_steps: set[int] = set()

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            if self.client is None:
                from mlflow.tracking import MlflowClient

                self.uri = resolve_tracking_uri(self.uri)
                self.client = MlflowClient(tracking_uri=self.uri)
            return fn()
        except Exception as exc:  # noqa: BLE001 - see class docstring
            self.warn(what, exc)
            return None

    def start(self, out: Path, cfg: dict, *, experiment: str | None = None, experiment_id: str | None = None,
              run_name: str | None = None, tags: dict[str, str] | None = None, resume: bool = False) -> str | None:
        """Continue the run recorded in `out/mlflow_run.json` (when `resume`), else create one."""
        out = Path(out)
        run_file = out / RUN_FILE
        if resume and run_file.is_file():
            recorded = json.loads(run_file.read_text())
            self.uri = self.uri or recorded.get("tracking_uri")

            def reopen():
                rid = recorded["run_id"]
                self.client.get_run(rid)
                self.client.update_run(rid, status="RUNNING")
                hist = self.client.get_metric_history(rid, "val_miou")
                self.logged_steps = {m.step for m in hist}
                return rid
            self.run_id = self._guard("resuming the run", reopen)
            if self.run_id:
                return self.run_id

        def create():
            eid = experiment_id or get_or_create_experiment(self.client, experiment or DEFAULT_EXPERIMENT)
            run = self.client.create_run(eid, run_name=run_name, tags=dict(tags or {}))
            rid = run.info.run_id
            log_params(self.client, rid, flatten(cfg))
            self.client.log_text(rid, dump_yaml(cfg), "config.yaml")
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(run_file, json.dumps({"run_id": rid, "tracking_uri": self.uri}))
            return rid

        self.run_id = self._guard("creating the run", create)
        return self.run_id

    def log_epoch(self, metrics: dict) -> None:
        """Metrics of one validation at step = epoch; steps already in MLflow (a resumed run
        re-trains the epochs after its last checkpoint) are not written twice."""
        step = int(metrics["epoch"])
        if not self.run_id or step in self.logged_steps:
            return

        def log():
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            batch = [Metric(k, float(metrics[k]), ts, step) for k in EPOCH_METRICS if k in metrics]
            self.client.log_batch(self.run_id, metrics=batch)
            self.logged_steps.add(step)
        self._guard("logging metrics", log)

    def finish(self, out: Path, summary: dict) -> None:
        """Final metrics (`final_val_miou`, `iou_<class>`), pictures, weights; run FINISHED."""
        out = Path(out)
        if not self.run_id:
            return

        for metrics in summary.get("history", []):       # epochs a killed process never logged
            self.log_epoch(metrics)

        def log():
            from mlflow.entities import Metric

            ts, step = int(time.time() * 1000), int(summary["final"]["epochs"])
            final = summary["final"]
            batch = [Metric("final_val_miou", float(final["val_miou"]), ts, step),
                     Metric("final_val_pixel_acc", float(final["val_pixel_acc"]), ts, step)]
            batch += [Metric(f"iou_{name}", float(v), ts, step)
                      for name, v in summary["per_class_iou"].items() if v == v]     # NaN: class absent
            self.client.log_batch(self.run_id, metrics=batch)
            for name in ("config.yaml", METRICS, CONFUSION):
                if (out / name).is_file():
                    self.client.log_artifact(self.run_id, str(out / name))
            for folder in (MODEL_DIR, OVERLAYS):
                if (out / folder).is_dir():
                    self.client.log_artifacts(self.run_id, str(out / folder), folder)
            self.client.set_terminated(self.run_id, "FINISHED")
        self._guard("logging the final evaluation", log)

    def fail(self, reason: str) -> None:
        if self.run_id:
            self._guard("marking the run failed", lambda: (
                self.client.set_tag(self.run_id, "error", reason[:5000]),
                self.client.set_terminated(self.run_id, "FAILED")))

    def register(self, name: str, tags: dict[str, str] | None = None) -> str | None:
        """A new version of registered model `name` whose source is this run's `model/` folder."""
        if not self.run_id:
            return None
        return self._guard("registering the model",
                           lambda: register_model(self.client, name, self.run_id, tags))


# --- CLI ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    from datasets import preflight
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
    tracker.finish(out, summary)
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
