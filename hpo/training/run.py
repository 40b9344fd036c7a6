"""One full, resumable training in a folder: the library behind `python -m hpo.train`.

`train(cfg, out)` trains with the shared Trainer and leaves in `out`:
    last.pt          trainer state (model, optimizer, scheduler, RNG), written atomically
    metrics.json     per-validation history; at the end also the final evaluation
    config.yaml      the resolved run config (what `hpo.train` re-runs exactly)
    model/           weights.pt (a bare state_dict) + config.yaml: what the registry points at
    confusion.png    row-normalised confusion matrix of the final evaluation
    overlays/        prediction overlays of the final evaluation
    done.json        written last: the run finished (`--resume` then has nothing to do)

Choices:
- Checkpoints are taken after a validation whose epoch is a multiple of
  `runtime.checkpoint_every` (and after the last epoch): the trainer hands control back only at
  validations. The trainer replays epoch e's shuffle from `seed*1000 + e` and the checkpoint holds
  the RNG state, so a resumed run matches an uninterrupted one.
- The per-epoch `val_miou` curve is always single-scale; `eval.tta` (multi-scale + flip) applies
  to the final evaluation only (hpo.training.outputs, shared with promotion).
- No MLflow here: the caller tracks (`hpo.train` through hpo.tracking.train_tracker).

Room `hpo.training`: plain PyTorch, never imports Ray, Optuna or MLflow.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from hpo.config import ConfigError, dump_yaml, normalize
from hpo.training.files import write_text_atomic
from hpo.training.outputs import final_evaluation, final_metrics, write_final_outputs
from hpo.training.prepare import prepare_data
from hpo.training.trainer import Trainer

CHECKPOINT = "last.pt"
METRICS = "metrics.json"
DONE = "done.json"


def read_done(out: Path) -> dict | None:
    path = Path(out) / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def read_history(out: Path) -> list[dict]:
    path = Path(out) / METRICS
    try:
        return json.loads(path.read_text()).get("history", [])
    except (OSError, ValueError):
        return []


def train(cfg: dict, out: Path, resume: bool = False, log: Callable[[str], None] = print,
          on_validation: Callable[[dict], None] | None = None) -> dict:
    """Train `cfg` into `out`; returns the summary also written to metrics.json and done.json.

    `on_validation(metrics)` is called after each validation, once the checkpoint of that epoch
    (if any) is on disk. No MLflow here: the caller tracks (`hpo.train` through hpo.tracking.train_tracker).
    """
    from models.backbone import scratch_warning

    cfg = normalize(cfg)
    warning = scratch_warning(cfg)      # depth >= 50 with pretrained: null: one loud line, then train
    if warning:
        print(warning, file=sys.stderr, flush=True)
    out = Path(out)
    ckpt = out / CHECKPOINT
    if resume and not ckpt.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt}")
    prepare_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE).unlink(missing_ok=True)          # not done until this run says so
    trainer = Trainer(cfg, log=log)
    history: list[dict] = []
    if resume:
        trainer.load(ckpt)
        history = [h for h in read_history(out) if h["epoch"] <= trainer.epoch]
        log(f"resumed from {ckpt} at epoch {trainer.epoch}")
    write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    every, epochs = cfg["runtime"]["checkpoint_every"], cfg["budget"]["epochs"]
    last: dict[str, Any] = {}

    def after_validation(trainer, metrics, val):
        history.append(dict(metrics))
        last.update(val=val, epoch=trainer.epoch)
        write_text_atomic(out / METRICS, json.dumps({"history": history}, indent=1))
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
    write_text_atomic(out / METRICS, json.dumps(summary, indent=1))
    write_text_atomic(out / DONE, json.dumps({"final": final, "per_class_iou": val.per_class_iou,
                                         "wall_seconds": summary["wall_seconds"]}, indent=1))
    return summary
