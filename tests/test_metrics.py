"""ConfusionMatrix against a brute-force NumPy reference of the official Cityscapes IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datasets import DatasetError
from datasets.metrics import ConfusionMatrix

C = 6


def _reference(preds, targets, num_classes, ignore=255):
    """Per-class TP/(TP+FP+FN) over the whole set, pixel by pixel, skipping ignored ground truth."""
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    correct = total = 0
    for p_img, t_img in zip(preds, targets):
        for p, t in zip(p_img.ravel().tolist(), t_img.ravel().tolist()):
            if t == ignore:
                continue
            total += 1
            if p == t:
                tp[t] += 1
                correct += 1
            else:
                fn[t] += 1
                fp[p] += 1
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else math.nan for c in range(num_classes)]
    valid = [v for v in iou if not math.isnan(v)]
    return iou, sum(valid) / len(valid), correct / total


def _random_batches(seed, n=3):
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        t = rng.integers(0, C - 2, (2, 17, 23))          # classes 4 and 5 never in the ground truth
        t[rng.random(t.shape) < 0.2] = 255               # ignore pixels
        p = rng.integers(0, C - 1, (2, 17, 23))          # class 5 never predicted -> NaN; 4 predicted -> IoU 0
        preds.append(p)
        targets.append(t)
    return preds, targets


def test_matches_bruteforce_reference_with_ignore_and_absent_classes():
    preds, targets = _random_batches(0)
    cm = ConfusionMatrix(C)
    for p, t in zip(preds, targets):
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    iou, miou, acc = _reference(preds, targets, C)
    res = cm.compute()
    assert math.isnan(res["per_class_iou"][5]) and math.isnan(iou[5])
    assert res["per_class_iou"][4] == 0.0                 # predicted but absent from gt: counts as 0
    np.testing.assert_allclose(res["per_class_iou"][:5], iou[:5], rtol=1e-12)
    assert res["miou"] == pytest.approx(miou, rel=1e-12)
    assert res["pixel_acc"] == pytest.approx(acc, rel=1e-12)
    assert int(cm.mat.sum()) == sum(int((t != 255).sum()) for t in targets)


def test_merge_equals_single_and_state_dict_roundtrip():
    preds, targets = _random_batches(1, n=4)
    single, a, b = ConfusionMatrix(C), ConfusionMatrix(C), ConfusionMatrix(C)
    for k, (p, t) in enumerate(zip(preds, targets)):
        single.update(torch.from_numpy(p), torch.from_numpy(t))
        (a if k % 2 else b).update(torch.from_numpy(p), torch.from_numpy(t))
    a_before = a.mat.clone()
    assert torch.equal((a + b).mat, single.mat)
    assert torch.equal(a.mat, a_before)                     # `+` leaves its operands alone
    a.merge(b)
    assert torch.equal(a.mat, single.mat)
    np.testing.assert_array_equal(a.compute()["per_class_iou"], single.compute()["per_class_iou"])
    restored = ConfusionMatrix(C)
    restored.load_state_dict(single.state_dict())
    assert torch.equal(restored.mat, single.mat)
    single.all_reduce()                                     # no process group: a no-op
    assert torch.equal(restored.mat, single.mat)


def test_accepts_logits_and_rejects_bad_input():
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 8, 9, generator=rng)
    target = torch.randint(0, C, (2, 8, 9), generator=rng)
    a, b = ConfusionMatrix(C), ConfusionMatrix(C)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.mat, b.mat)
    with pytest.raises(DatasetError, match="does not match label shape"):
        a.update(logits.argmax(1), target[:, :4])
    with pytest.raises(DatasetError, match="label values outside"):
        a.update(target, torch.full_like(target, C))
    with pytest.raises(DatasetError, match="cannot merge"):
        a.merge(ConfusionMatrix(C + 1))


def test_empty_matrix_and_all_ignored():
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 255))
    res = cm.compute()
    assert math.isnan(res["miou"]) and math.isnan(res["pixel_acc"]) and all(math.isnan(v) for v in res["per_class_iou"])
    cm.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    res = cm.compute()
    assert res["per_class_iou"][0] == 0.5 and res["per_class_iou"][1] == 0.0 and math.isnan(res["per_class_iou"][2])
    assert res["miou"] == 0.25 and res["pixel_acc"] == 0.5


def test_state_dict_carries_the_ignore_index_and_loads_as_int64_counts():
    cm = ConfusionMatrix(3, ignore_index=7)
    cm.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 7]]))
    state = cm.state_dict()
    assert set(state) == {"mat", "ignore_index"} and state["ignore_index"] == 7
    other = ConfusionMatrix(3)                                   # ignore 255 until the state says 7
    other.load_state_dict(state)
    assert other.ignore_index == 7 and torch.equal(other.mat, cm.mat)
    state["mat"][0, 0] = 99                                      # a copy: the loaded matrix is its own
    assert other.mat[0, 0] == 1
    old = ConfusionMatrix(3, ignore_index=4)
    old.load_state_dict({"mat": torch.ones(3, 3, dtype=torch.float64)})   # an older state: counts as floats
    assert old.mat.dtype == torch.int64 and old.ignore_index == 4 and int(old.mat.sum()) == 9
    with pytest.raises(DatasetError) as err:
        old.load_state_dict({"mat": torch.zeros(2, 3)})
    assert str(err.value) == "metrics: state has shape (2, 3), expected 3x3"


def test_edge_counts_by_hand():
    one = ConfusionMatrix(1)                                     # a single class is a valid task
    one.update(torch.tensor([[0]]), torch.tensor([[0]]))
    assert one.mat.dtype == torch.int64
    assert one.compute() == {"miou": 1.0, "per_class_iou": [1.0], "pixel_acc": 1.0}   # one pixel: defined
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 2]]))    # class 0: tp 1; class 1: fp 1; class 2: fn 1
    got = cm.compute()
    assert got["per_class_iou"] == [1.0, 0.0, 0.0] and got["miou"] == pytest.approx(1 / 3)
    assert got["pixel_acc"] == 0.5
    with pytest.raises(DatasetError) as err:
        ConfusionMatrix(0)
    assert str(err.value) == "num_classes: expected >= 1, got 0"


def test_all_reduce_sums_over_a_process_group(tmp_path):
    """A one-process gloo group: the sum over it is the matrix itself (no-op without a group)."""
    import torch.distributed as dist

    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]))
    before = cm.mat.clone()
    assert torch.equal(cm.all_reduce().mat, before)             # not initialised: untouched
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        assert torch.equal(cm.all_reduce().mat, before)
        assert torch.equal(cm.all_reduce(group=dist.new_group([0])).mat, before)
    finally:
        dist.destroy_process_group()
