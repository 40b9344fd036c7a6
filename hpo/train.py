"""`python -m hpo.train CONFIG.yaml` — one training run with the shared engine.

    python -m hpo.train search_spaces/configs/msglore_toy.yaml --out runs/msglore_toy
    python -m hpo.train CONFIG.yaml --out runs/x --resume      # continue from runs/x/last.pt

Writes `last.pt` (model + optimizer + scheduler + step, atomically) every
`runtime.checkpoint_every` epochs, `metrics.json` (per-epoch history and final per-class IoU),
`config.yaml` (the resolved config) and prediction overlays of the final validation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hpo.config import ConfigError, dump_yaml, load_run_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m hpo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="run config YAML")
    p.add_argument("--out", help="output directory (default: runs/<config name>)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    return p.parse_args(argv)


def train(cfg: dict, out: Path, resume: bool = False, log=print) -> dict:
    from hpo.engine import Trainer
    from hpo.search import ensure_data
    from hpo.trainable import write_overlays

    ensure_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, log=log)
    ckpt = out / "last.pt"
    history: list[dict] = []
    if resume:
        if not ckpt.is_file():
            raise ConfigError(f"--resume: no checkpoint at {ckpt}")
        trainer.load(ckpt)
        if (out / "metrics.json").is_file():
            history = json.loads((out / "metrics.json").read_text())["history"][:trainer.epoch]
        log(f"resumed from {ckpt} at epoch {trainer.epoch}")
    (out / "config.yaml").write_text(dump_yaml(trainer.cfg))
    every = trainer.cfg["runtime"]["checkpoint_every"]
    last_val = {}

    def on_validation(trainer, metrics, val):
        history.append(metrics)
        last_val["per_class_iou"] = val.per_class_iou
        last_val["samples"] = val.samples
        log(f"epoch {metrics['epoch']}/{trainer.cfg['budget']['epochs']}  loss {metrics['train_loss']:.4f}  "
            f"val mIoU {metrics['val_miou']:.2f}  pixel acc {metrics['val_pixel_acc']:.2f}  "
            f"({metrics['epoch_seconds']:.1f} s)")
        if trainer.epoch % every == 0 or trainer.epoch == trainer.cfg["budget"]["epochs"]:
            trainer.save(ckpt)
            (out / "metrics.json").write_text(json.dumps({"history": history}, indent=1))

    start = time.perf_counter()
    final = trainer.fit(on_validation)
    summary = {"history": history, "final": final, "per_class_iou": last_val.get("per_class_iou", {}),
               "wall_seconds": time.perf_counter() - start}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    if last_val.get("samples"):
        write_overlays(trainer, last_val["samples"], out / "overlays")
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_run_config(args.config)
        if args.seed is not None:
            cfg["seed"] = args.seed
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        summary = train(cfg, out, resume=args.resume)
    except ValueError as err:    # ConfigError / DatasetError: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    final = summary["final"]
    if final:
        print(f"final val mIoU {final['val_miou']:.2f}  ({summary['wall_seconds']:.0f} s); outputs in {out}")
        for name, iou in summary["per_class_iou"].items():
            print(f"  {name:<16} {iou:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
