"""`python -m hpo.evaluate CONFIG.yaml --checkpoint CKPT [--tta] [--export-dir DIR]`

Evaluates a checkpoint on the config's val split: mIoU and per-class IoU, single-scale or with
multi-scale + flip TTA, predictions and overlays exported with `--export-dir` (the library:
hpo.training.evaluation).
"""

from __future__ import annotations

import argparse
import sys

from hpo.training.evaluation import evaluate, export_folder


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m hpo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (last.pt) or a model state_dict")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--export-dir", help="write official-format label-id PNGs and overlays here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from hpo.config import load_run_config
    from hpo.training.outputs import per_class_lines

    args = parse_args(argv)
    try:
        cfg = load_run_config(args.config)
        res = evaluate(cfg, args.checkpoint, tta=args.tta, export_dir=args.export_dir)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    base = res["majority_baseline"]
    print(f"mIoU {res['miou']:.2f}  pixel acc {res['pixel_acc']:.2f}{'  (TTA)' if args.tta else ''}   "
          f"[always predicting the majority class: mIoU {base['miou']:.2f}, pixel acc {base['pixel_acc']:.2f}]")
    print(per_class_lines(res["per_class_iou"]))
    if args.export_dir:
        print(f"predictions written to {export_folder(cfg['data']['name'], args.export_dir)} and "
              f"{args.export_dir}/overlays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
