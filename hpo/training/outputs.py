"""What a training leaves in a folder besides its checkpoint: overlays, the final evaluation, weights.

Shared by the Tune trainable (search trials and promoted trainings, into the checkpoint folder the
MLflow callback logs from) and `hpo.train` (into its output folder):
- `overlays/val_<i>.png`: colour overlays of a few validation predictions;
- `final_evaluation`: the evaluation a finished training is scored by. The per-epoch curve is
  always single-scale (TTA at every epoch would cost 2 x len(eval.scales) validations); with
  `eval.tta` the final evaluation is multi-scale + flip, otherwise it is the last validation;
- `model/weights.pt` (a bare state_dict, CPU tensors) + `model/config.yaml`: what the model
  registry points at; `confusion.png`: the row-normalised confusion matrix.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from hpo.config import dump_yaml
from hpo.training.files import atomic_path
from hpo.trials import CONFUSION, MODEL_DIR, OVERLAYS



def write_overlays(samples, palette, out_dir: Path) -> None:
    from datasets.export import overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (image, pred, _gt) in enumerate(samples):
        cv2.imwrite(str(out_dir / f"val_{i}.png"), cv2.cvtColor(overlay(image, pred, palette), cv2.COLOR_RGB2BGR))


def final_evaluation(trainer, last_val):
    """`last_val` (the last epoch's validation) unless `eval.tta` asks for multi-scale + flip."""
    cfg = trainer.cfg
    if cfg["eval"]["tta"] or last_val is None:
        return trainer.validate(tta=cfg["eval"]["tta"], keep=cfg["eval"]["overlays"])
    return last_val


def final_metrics(val, tta: bool, epochs: int) -> dict:
    return {"val_miou": val.metrics["val_miou"], "val_pixel_acc": val.metrics["val_pixel_acc"],
            "tta": tta, "epochs": epochs}


def per_class_lines(per_class_iou: dict[str, float]) -> str:
    """The per-class IoU table `hpo.train` and `hpo.evaluate` print."""
    return "\n".join(f"  {name:<16} {iou:6.2f}" for name, iou in per_class_iou.items())


def write_model(trainer, cfg: dict, out: Path) -> None:
    model_dir = Path(out) / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_dir / "weights.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, tmp)
    (model_dir / "config.yaml").write_text(dump_yaml(cfg))


def write_final_outputs(trainer, cfg: dict, val, out: Path) -> None:
    """Weights, overlays and the confusion picture of a finished training's final evaluation."""
    out = Path(out)
    write_model(trainer, cfg, out)
    if val.samples:
        write_overlays(val.samples, trainer.data.palette, out / OVERLAYS)
    if val.confusion is not None:
        title = f"final val mIoU {val.metrics['val_miou']:.2f}{' (TTA)' if cfg['eval']['tta'] else ''}"
        plot_confusion(val.confusion, list(trainer.data.class_names), out / CONFUSION, title)


def plot_confusion(matrix, class_names: list[str], path: Path, title: str) -> None:
    """Rows = ground truth normalised to 1 (per-class recall on the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(class_names)
    size = max(5.0, 0.38 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
