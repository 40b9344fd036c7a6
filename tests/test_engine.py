"""The shared training loop, the evaluate CLI and the package layout (CPU, tiny synthetic data)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, tiny_run_config


def test_import_datasets_is_ours_not_hugging_face():
    import datasets

    assert Path(datasets.__file__).resolve().parent == REPO / "datasets"
    assert hasattr(datasets, "build")


def test_models_and_datasets_never_import_orchestration():
    offenders = []
    for pkg in ("models", "datasets"):
        for path in (REPO / pkg).rglob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] in (["import"], ["from"]) and len(words) > 1 and \
                        words[1].split(".")[0] in ("hpo", "ray", "mlflow"):
                    offenders.append(f"{path.name}: {line.strip()}")
    assert not offenders


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    from hpo.training.trainer import Trainer

    torch.set_num_threads(1)
    cfg = tiny_run_config(tiny_data)
    trainer = Trainer(cfg, log=lambda *_: None)
    seen = []
    final = trainer.fit(lambda t, m, v: seen.append((m, v)))
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    trainer.save(path)
    return cfg, trainer, seen, final, path


def test_fit_validates_every_epoch_with_poly_lr(trained):
    cfg, trainer, seen, final, _ = trained
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3]
    assert trainer.step == 3 * 3                               # epochs x iters_per_epoch
    lrs = [m["lr"] for m, _ in seen]
    assert lrs[0] > lrs[1] > lrs[2] == pytest.approx(0.0)      # poly decays to 0 at the end of the budget
    for m, v in seen:
        assert 0.0 <= m["val_miou"] <= 100.0 and np.isfinite(m["train_loss"])
        assert len(v.per_class_iou) == 19 and len(v.samples) == 2
    assert final["val_miou"] == seen[-1][0]["val_miou"]


def test_checkpoint_round_trip_restores_state(trained, tiny_data):
    from hpo.training.trainer import Trainer

    cfg, trainer, _, _, path = trained
    other = Trainer(cfg, log=lambda *_: None)
    other.load(path)
    assert (other.epoch, other.step) == (trainer.epoch, trainer.step)
    for a, b in zip(trainer.model.state_dict().values(), other.model.state_dict().values()):
        assert torch.equal(a, b)
    assert other.validate().metrics["val_miou"] == pytest.approx(trainer.validate().metrics["val_miou"])


def test_diverging_loss_raises_divergence(tiny_data):
    from hpo.training.trainer import DivergenceError, Trainer

    cfg = tiny_run_config(tiny_data, **{"optim.lr": 1e12})
    with pytest.raises(DivergenceError, match="loss became"):
        Trainer(cfg, log=lambda *_: None).fit()


def test_validation_scores_by_hand_from_the_confusion_matrix(trained):
    """val_miou, val_pixel_acc and the per-class IoU of a validation, by hand from its confusion
    matrix (rows = ground truth): IoU = tp / (row + column - tp) over the classes present, percent."""
    _, trainer, _, _, _ = trained
    val = trainer.validate()
    m = val.confusion.astype(np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    present = union > 0
    iou = tp[present] / union[present] * 100
    assert val.metrics["val_miou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert val.metrics["val_pixel_acc"] == pytest.approx(tp.sum() / m.sum() * 100, abs=1e-6)
    names = list(trainer.data.class_names)
    assert [val.per_class_iou[names[i]] for i in np.flatnonzero(present)] == pytest.approx(list(iou), abs=1e-6)
    assert val.metrics["val_miou"] != pytest.approx(val.metrics["val_pixel_acc"], abs=0.5)   # tells them apart


def test_evaluate_cli_exports_official_format(trained, tiny_data, tmp_path, capsys):
    from hpo import evaluate

    cfg, trainer, _, _, ckpt = trained
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "export"
    assert evaluate.main([str(cfg_path), "--checkpoint", str(ckpt), "--export-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    miou = float(printed.split()[1])
    assert miou == pytest.approx(trainer.validate().metrics["val_miou"], abs=0.01)
    assert "majority class" in printed
    gts = sorted((tiny_data / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    exported = sorted((out / "labelIds").glob("*.png"))
    assert [p.name.replace("_leftImg8bit", "") for p in exported] == \
           [p.name.replace("_gtFine_labelIds", "") for p in gts]
    valid_label_ids = {0, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
    for pred_path, gt_path in zip(exported, gts):
        pred = cv2.imread(str(pred_path), cv2.IMREAD_UNCHANGED)
        assert pred.ndim == 2 and pred.shape == cv2.imread(str(gt_path), cv2.IMREAD_UNCHANGED).shape
        assert set(np.unique(pred).tolist()) <= valid_label_ids   # label ids, not train ids
    assert len(list((out / "overlays").glob("*.png"))) == len(gts)


def test_evaluate_missing_checkpoint_is_one_line(tiny_data, tmp_path, capsys):
    from hpo import evaluate

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_run_config(tiny_data)))
    assert evaluate.main([str(cfg_path), "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt" in err


def test_atomic_write_keeps_the_previous_file_when_a_write_fails(tmp_path):
    from hpo.training.files import atomic_path, write_text_atomic

    path = tmp_path / "state.json"
    write_text_atomic(path, "first")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
