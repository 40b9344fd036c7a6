"""predict_logits (single scale, TTA, sliding window) and the official-format export."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from datasets import DatasetError
from datasets.cityscapes_labels import ID_TO_TRAIN_ID, PALETTE, TRAIN_ID_TO_ID
from datasets.export import colorize, export_cityscapes, overlay
from datasets.inference import predict_logits

C = 5


class PointModel(nn.Module):
    """A 1x1 conv: translation- and flip-equivariant; returns the model output contract."""

    def __init__(self, channels=C):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 1)

    def forward(self, x):
        return {"out": self.conv(x), "aux": {}}


class ContextModel(PointModel):
    """A 5x5 conv: sees its neighbourhood, so flipping and tiling change its output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 5, padding=2)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensors: intra-op threads only add contention on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def image():
    return torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))


def test_single_scale_is_softmax_of_the_model(image):
    m = PointModel()
    p = predict_logits(m, image, num_classes=C)
    assert p.shape == (2, C, 40, 56)
    torch.testing.assert_close(p, m(image)["out"].softmax(1))


def test_tta_shape_and_probabilities(image):
    p = predict_logits(ContextModel(), image, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True, num_classes=C)
    assert p.shape == (2, C, 40, 56)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 40, 56))
    up = predict_logits(PointModel(), image, scales=(1.0,), num_classes=C, out_size=(80, 112))
    assert up.shape == (2, C, 80, 112)


def hand_tta(model, image, scales, flip):
    """TTA written out: each scale resized bilinearly (round(H*s) x round(W*s)), each pass softmaxed,
    flipped passes flipped back, every pass resized to the input size, the probabilities averaged."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    passes = []
    with torch.no_grad():
        for s in scales:
            x = F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
            for flipped in ((False, True) if flip else (False,)):
                p = model(x.flip(-1) if flipped else x)["out"].softmax(1)
                p = p.flip(-1) if flipped else p
                passes.append(F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False))
    return sum(passes) / len(passes)


@pytest.mark.parametrize("scales, flip", [((0.5, 1.0), False), ((0.5, 1.0), True), ((0.75, 1.25, 1.5), True),
                                          ((1.0,), True)])
def test_tta_is_the_average_over_the_given_scales_and_flips(image, scales, flip):
    m = ContextModel()
    torch.testing.assert_close(predict_logits(m, image, scales=scales, flip=flip, num_classes=C),
                               hand_tta(m, image, scales, flip), rtol=0, atol=1e-6)


def test_each_tta_scale_changes_the_result(image):
    m = ContextModel()
    one = predict_logits(m, image, scales=(1.0,), num_classes=C)
    two = predict_logits(m, image, scales=(0.5, 1.0), num_classes=C)
    half = predict_logits(m, image, scales=(0.5,), num_classes=C)
    assert (two - one).abs().max() > 1e-3
    torch.testing.assert_close(two, (one + half) / 2, rtol=0, atol=1e-6)      # two passes, equal weight
    assert (predict_logits(m, image, scales=(0.5, 1.5), num_classes=C) - two).abs().max() > 1e-3


def test_flip_equivariant_model_gives_identical_results_with_flip(image):
    m = PointModel()
    for scales in ((1.0,), (0.5, 1.0, 1.5)):
        a = predict_logits(m, image, scales=scales, flip=False, num_classes=C)
        b = predict_logits(m, image, scales=scales, flip=True, num_classes=C)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    c = ContextModel()   # the test can fail: a model with spatial context is not flip-equivariant
    assert not torch.allclose(predict_logits(c, image, num_classes=C),
                              predict_logits(c, image, flip=True, num_classes=C), atol=1e-4)


def test_sliding_window_equals_whole_image_for_translation_equivariant_model(image):
    m = PointModel()
    whole = predict_logits(m, image, num_classes=C)
    for crop, stride in (((24, 32), (16, 20)), ((24, 32), None), ((64, 20), (7, 9)), ((16, 16), (16, 16))):
        tiled = predict_logits(m, image, crop=crop, stride=stride, num_classes=C)
        torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)
    c = ContextModel()   # tile borders change a context model's output, so tiling is really happening
    assert not torch.allclose(predict_logits(c, image, crop=(24, 32), num_classes=C),
                              predict_logits(c, image, num_classes=C), atol=1e-4)
    ms = predict_logits(m, image, scales=(0.75, 1.5), flip=True, crop=(24, 32), num_classes=C)
    torch.testing.assert_close(ms, predict_logits(m, image, scales=(0.75, 1.5), num_classes=C), rtol=0, atol=1e-5)


def test_inference_rejects_wrong_class_count(image):
    with pytest.raises(DatasetError, match="model.num_classes"):
        predict_logits(PointModel(channels=3), image, num_classes=C)


# --- export ---------------------------------------------------------------------------------------
def test_export_roundtrip_gives_the_same_label_ids(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 19, (32, 64))
    pred[0, :5] = 255
    gt = tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png"
    gt.parent.mkdir(parents=True)
    cv2.imwrite(str(gt), np.zeros((32, 64), np.uint8))
    path = export_cityscapes(torch.from_numpy(pred), str(gt), str(tmp_path / "results"))
    assert path.endswith("results/frankfurt_000000_000294_leftImg8bit.png")
    back = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert back.ndim == 2 and back.dtype == np.uint8 and back.shape == (32, 64)
    assert np.array_equal(back, TRAIN_ID_TO_ID[pred.astype(np.uint8)])
    assert back[0, 0] == 0 and back[1, 1] in {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
    valid = pred != 255
    assert np.array_equal(ID_TO_TRAIN_ID[back][valid], pred[valid])     # label id -> train id inverts it
    named = export_cityscapes(pred, "synthcity_500001_000019", str(tmp_path / "r2"))
    assert named.endswith("synthcity_500001_000019_leftImg8bit.png")


def test_export_bad_inputs(tmp_path):
    gt = tmp_path / "aachen_000001_000019_gtFine_labelIds.png"
    cv2.imwrite(str(gt), np.zeros((32, 64), np.uint8))
    with pytest.raises(DatasetError, match="export at full resolution"):
        export_cityscapes(np.zeros((16, 32), np.int64), str(gt), str(tmp_path))
    with pytest.raises(DatasetError, match="not a Cityscapes name"):
        export_cityscapes(np.zeros((4, 4), np.int64), "2008_000002", str(tmp_path))
    with pytest.raises(DatasetError, match=r"values \[19\]"):
        export_cityscapes(np.full((4, 4), 19), "aachen_000001_000019", str(tmp_path))


def test_colorize_and_overlay():
    ids = np.array([[0, 10, 255], [18, 2, 255]])
    col = colorize(ids, PALETTE)
    assert col.shape == (2, 3, 3) and col.dtype == np.uint8
    assert tuple(col[0, 0]) == (128, 64, 128) and tuple(col[0, 2]) == (0, 0, 0)
    img = np.full((2, 3, 3), 200, np.uint8)
    assert np.array_equal(overlay(img, ids, PALETTE, alpha=0.0), img)
    full = overlay(img, ids, PALETTE, alpha=1.0)
    assert np.array_equal(full[:, :2], col[:, :2]) and np.array_equal(full[:, 2], img[:, 2])
    with pytest.raises(DatasetError, match="does not match"):
        overlay(img, ids[:, :2], PALETTE)


def hand_sliding(model, image, tiles_y, tiles_x, th, tw):
    """Sliding window written out: softmax of every tile, averaged where tiles overlap."""
    n, _, h, w = image.shape
    total, count = torch.zeros(n, C, h, w), torch.zeros(1, 1, h, w)
    with torch.no_grad():
        for y in tiles_y:
            for x in tiles_x:
                total[:, :, y:y + th, x:x + tw] += model(image[:, :, y:y + th, x:x + tw])["out"].softmax(1)
                count[:, :, y:y + th, x:x + tw] += 1
    return total / count


def test_sliding_window_tiles_by_hand():
    """40x56 images, 24x32 tiles, default stride 2/3 of the tile (16, 21): rows start at 0, 16 and
    columns at 0, 21, then 24 (the last tile aligned to the border)."""
    m = ContextModel()
    image = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    expected = hand_sliding(m, image, [0, 16], [0, 21, 24], 24, 32)
    torch.testing.assert_close(predict_logits(m, image, crop=(24, 32), num_classes=C), expected, rtol=0, atol=1e-6)
    # an explicit stride; a crop wider than the image is one tile of the image's width
    expected = hand_sliding(m, image, [0, 10, 16], [0], 24, 56)
    torch.testing.assert_close(predict_logits(m, image, crop=(24, 80), stride=(10, 5), num_classes=C), expected,
                               rtol=0, atol=1e-6)
    # a crop at least the image size: the whole image in one pass
    torch.testing.assert_close(predict_logits(m, image, crop=(64, 64), num_classes=C),
                               predict_logits(m, image, num_classes=C), rtol=0, atol=0)
    # probabilities accumulate in float32 even for a bfloat16 batch
    half = predict_logits(lambda x: m(x.float()), image.bfloat16(), crop=(24, 32), num_classes=C)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, hand_sliding(lambda x: m(x.float()), image.bfloat16(), [0, 16], [0, 21, 24],
                                                  24, 32), rtol=0, atol=1e-6)


class StridedModel(nn.Module):
    """Logits at half the input's resolution, as a bare tensor (no output dict)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, C, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_low_resolution_logits_are_resized_bilinearly_before_the_softmax(image):
    import torch.nn.functional as F

    m = StridedModel()
    with torch.no_grad():
        expected = F.interpolate(m(image), size=(40, 56), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(predict_logits(m, image, num_classes=C), expected, rtol=0, atol=1e-6)
    with pytest.raises(DatasetError) as err:
        predict_logits(lambda x: m(x)[:, :3], image, num_classes=C)
    assert str(err.value) == "model.num_classes: model returned 3 channels, expected 5"
