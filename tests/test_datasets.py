"""datasets: synthetic generator, Cityscapes/Pascal-Context loaders, transforms, build(cfg), bad input."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
import torch

import datasets
from datasets import DatasetError
from datasets.cityscapes_labels import (CLASS_NAMES, ID_TO_TRAIN_ID, LABELS, NUM_CLASSES, PALETTE,
                                        label_id_to_train_id)
from datasets.synthetic import ensure, generate, main as synthetic_main, render_scene
from datasets.transforms import TrainTransform, ValTransform, denormalize

SIZE = (64, 128)


def _cfg(root, **data):
    return {"seed": 0, "data": {"name": "synthetic", "root": str(root), "crop": [48, 48], "batch_size": 2, **data}}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "set"
    generate(str(root), train=6, val=3, size=SIZE, seed=0)
    return root


@pytest.fixture
def tree_copy(tree, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tree, dst)
    return dst


def _files(root, split, kind):
    sub = {"image": ("leftImg8bit", "_leftImg8bit.png"), "label": ("gtFine", "_gtFine_labelIds.png")}[kind]
    d = os.path.join(root, sub[0], split, "synthcity")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(sub[1]))


# --- generator --------------------------------------------------------------------------------
def _read_all(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".png"):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(dirpath, f), root)] = fh.read()
    return out


def test_generator_same_seed_identical_bytes_different_seed_differs(tmp_path):
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    generate(a, train=2, val=1, size=SIZE, seed=5)
    generate(b, train=2, val=1, size=SIZE, seed=5)
    generate(c, train=2, val=1, size=SIZE, seed=6)
    generate(d, train=3, val=1, size=SIZE, seed=5)   # more images: the first ones must not change
    fa, fb, fc, fd = map(_read_all, (a, b, c, d))
    assert len(fa) == 6 and fa == fb
    assert set(fa) == set(fc) and all(fa[k] != fc[k] for k in fa if "leftImg8bit" in k)
    assert all(fd[k] == fa[k] for k in fa)


def test_generator_covers_all_19_classes_and_look_alikes_share_colours():
    ids_seen = set()
    pixels = {}
    for i in range(40):
        image, label = render_scene(0, "train", i, SIZE)
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8 and label.shape == SIZE
        ids_seen |= set(np.unique(label).tolist())
        for lid in np.unique(label):
            pixels.setdefault(int(lid), []).append(image[label == lid].astype(np.float64))
    train_ids = {int(ID_TO_TRAIN_ID[i]) for i in ids_seen} - {255}
    assert train_ids == set(range(NUM_CLASSES))
    assert 10 in ids_seen  # rail track (ignored) appears under trains

    def stats(lid):
        p = np.concatenate(pixels[lid])
        return p.mean(0), p.std(0)
    # look-alikes: means closer than half a standard deviation in every channel ...
    for a, b in (("wall", "fence"), ("car", "truck"), ("bus", "train"), ("person", "rider")):
        (ma, sa), (mb, sb) = stats(_id(a)), stats(_id(b))
        assert np.all(np.abs(ma - mb) < 0.5 * np.maximum(sa, sb)), (a, b, ma, mb)
    # ... which unrelated classes are not
    (ms, ss), (mr, sr) = stats(_id("sky")), stats(_id("road"))
    assert np.any(np.abs(ms - mr) > np.maximum(ss, sr))


def _id(name):
    return next(lab.id for lab in LABELS if lab.name == name)


def test_generator_cli_writes_cityscapes_names(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synthetic_main(["--out", str(out), "--train", "2", "--val", "1", "--size", "64x96", "--seed", "3"]) == 0
    assert "wrote 2 train + 1 val" in capsys.readouterr().out
    img = out / "leftImg8bit" / "train" / "synthcity" / "synthcity_000001_000019_leftImg8bit.png"
    lab = out / "gtFine" / "val" / "synthcity" / "synthcity_500000_000019_gtFine_labelIds.png"
    assert cv2.imread(str(img)).shape == (64, 96, 3)
    assert cv2.imread(str(lab), cv2.IMREAD_UNCHANGED).ndim == 2
    assert synthetic_main(["--out", str(out), "--size", "64by96"]) == 2
    assert "data.generate.size" in capsys.readouterr().err


def test_ensure_generates_once_and_build_never_generates(tmp_path):
    root = tmp_path / "gen"
    gen = {"train": 2, "val": 1, "size": [64, 96], "seed": 1}
    with pytest.raises(DatasetError) as err:
        datasets.build(_cfg(root, generate=gen))
    msg = str(err.value)
    assert "\n" not in msg and "python -m datasets.synthetic --out" in msg and "--size 64x96" in msg
    assert not root.exists()
    assert ensure(str(root), **gen) is True
    assert ensure(str(root), **gen) is False
    assert len(datasets.build(_cfg(root, generate=gen)).train) == 2
    with pytest.raises(DatasetError, match="data.generate"):
        ensure(str(root), **{**gen, "seed": 2})
    with pytest.raises(DatasetError, match="data.generate"):
        datasets.build(_cfg(root, generate={**gen, "train": 3}))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]   # no temp folders left behind


def test_ensure_fills_an_existing_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    assert ensure(str(root), train=1, val=1, size=[64, 64], seed=0) is True
    assert len(datasets.build(_cfg(root, crop=[32, 32], batch_size=1)).val) == 1


# --- label table --------------------------------------------------------------------------------
def test_label_id_to_train_id_table_for_all_ids():
    evaluated = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    for label_id in range(-1, 34):
        expected = evaluated.index(label_id) if label_id in evaluated else (255 if label_id >= 0 else -1)
        assert label_id_to_train_id(label_id) == expected, label_id
        if label_id >= 0:
            assert ID_TO_TRAIN_ID[label_id] == expected
    assert (ID_TO_TRAIN_ID[34:] == -1).all()          # unknown ids are rejected, not ignored
    assert len(LABELS) == 35 and NUM_CLASSES == 19 and PALETTE.shape == (19, 3)
    assert CLASS_NAMES[:3] == ("road", "sidewalk", "building") and CLASS_NAMES[-1] == "bicycle"


# --- loader / build ------------------------------------------------------------------------------
def test_build_items_and_bundle(tree):
    b = datasets.build(_cfg(tree))
    assert (b.name, b.num_classes, b.ignore_index, len(b.train), len(b.val)) == ("synthetic", 19, 255, 6, 3)
    assert b.class_names == list(CLASS_NAMES) and b.palette.shape == (19, 3)
    assert b.loader_kwargs == {"num_workers": 0, "pin_memory": torch.cuda.is_available()}
    item = b.train[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 48, 48)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (48, 48)
    values = set(item["label"].unique().tolist())
    assert values <= set(range(19)) | {255}
    v = b.val[1]
    assert v["image"].shape == (3, *SIZE) and v["label"].shape == SIZE and v["name"] == "synthcity_500001_000019"
    raw = cv2.imread(_files(tree, "val", "label")[1], cv2.IMREAD_UNCHANGED)
    assert torch.equal(v["label"], torch.from_numpy(ID_TO_TRAIN_ID[raw].astype(np.int64)))
    # val image is the file, normalised
    rgb = cv2.cvtColor(cv2.imread(_files(tree, "val", "image")[1]), cv2.COLOR_BGR2RGB)
    assert np.abs(denormalize(v["image"]).astype(int) - rgb).max() <= 1

    batches = list(b.train_loader())
    assert len(batches) == 3 and batches[0]["image"].shape == (2, 3, 48, 48) and len(batches[0]["name"]) == 2
    vb = list(b.val_loader())
    assert [x["image"].shape[0] for x in vb] == [2, 1]      # val_batch_size 2, nothing dropped
    w = datasets.build(_cfg(tree, workers=1)).loader_kwargs
    assert w["num_workers"] == 1 and w["persistent_workers"] is True


def test_loader_prefers_train_id_files(tree_copy):
    before = datasets.build(_cfg(tree_copy)).val
    expected = [before[i]["label"] for i in range(len(before))]
    for path in _files(tree_copy, "val", "label"):
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        cv2.imwrite(path.replace("_labelIds", "_labelTrainIds"), ID_TO_TRAIN_ID[raw].astype(np.uint8))
        cv2.imwrite(path, np.full_like(raw, 7))           # would read as all-road if still used
    after = datasets.build(_cfg(tree_copy)).val
    assert all(s.label.endswith("_gtFine_labelTrainIds.png") for s in after.samples)
    for i, lab in enumerate(expected):
        assert torch.equal(after[i]["label"], lab)


def _batches(bundle, seed):
    return [(b["image"], b["label"], b["name"])
            for b in bundle.train_loader(generator=torch.Generator().manual_seed(seed))]


def test_augmentation_reproducible_for_a_seed_and_independent_of_workers(tree):
    b0 = datasets.build(_cfg(tree))
    b2 = datasets.build(_cfg(tree, workers=2))
    first, again, other = _batches(b0, 7), _batches(b0, 7), _batches(b0, 8)
    with_workers = _batches(b2, 7)
    for x, y in zip(first, again):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
    for x, y in zip(first, with_workers):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(first, other))


# --- transforms ----------------------------------------------------------------------------------
def test_train_transform_pads_small_images_and_center_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (20, 30), dtype=np.uint8)
    t = TrainTransform(crop=(32, 40), scale=None, flip=False, jitter=False)
    img, lab = t(image, label, np.random.default_rng(1))
    assert img.shape == (3, 32, 40) and lab.shape == (32, 40)
    assert (lab[20:] == 255).all() and (lab[:, 30:] == 255).all() and (img[:, 20:] == 0).all()
    assert np.array_equal(lab[:20, :30], label)
    c = TrainTransform(crop=(10, 10), scale=None, flip=False, jitter=False, crop_mode="center")
    _, lab = c(image, label, np.random.default_rng(2))
    assert np.array_equal(lab, label[5:15, 10:20])
    r = TrainTransform(crop=(8, 8), resize=(40, 60), scale=(1.0, 1.0), flip=True, jitter=True)
    img, lab = r(image, label, np.random.default_rng(3))
    assert img.shape == (3, 8, 8) and img.dtype == np.float32 and lab.dtype == np.int64


def test_max_class_ratio_avoids_single_class_crops():
    label = np.zeros((100, 100), np.uint8)
    label[:, 80:] = 1                                   # class 1 only in the right fifth
    image = np.zeros((100, 100, 3), np.uint8)

    def mixed(ratio):
        t = TrainTransform(crop=(30, 30), scale=None, flip=False, jitter=False, max_class_ratio=ratio)
        return sum(len(np.unique(t(image, label, np.random.default_rng(s))[1])) > 1 for s in range(40))
    assert mixed(0.95) > mixed(1.0) + 10


def test_val_transform_resize_divisor_and_full_res_labels():
    image = np.zeros((70, 90, 3), np.uint8)
    label = np.ones((70, 90), np.uint8)
    img, lab = ValTransform(size_divisor=16)(image, label)
    assert img.shape == (3, 64, 80) and lab.shape == (64, 80)
    img, lab = ValTransform(resize=(35, 45), full_res_labels=True)(image, label)
    assert img.shape == (3, 35, 45) and lab.shape == (70, 90)


# --- Pascal-Context ---------------------------------------------------------------------------
def _pascal_tree(root, values=(0, 1, 59, 255)):
    voc = root / "VOCdevkit" / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (voc / sub).mkdir(parents=True)
    for split, ids in (("train", ["2008_000002", "2008_000003"]), ("val", ["2008_000007"])):
        (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for k, image_id in enumerate(ids):
            h, w = 40 + 8 * k, 56
            cv2.imwrite(str(voc / "JPEGImages" / f"{image_id}.jpg"), np.full((h, w, 3), 100, np.uint8))
            lab = np.zeros((h, w), np.uint8)
            for j, v in enumerate(values):
                lab[:, j * 14:(j + 1) * 14] = v
            cv2.imwrite(str(voc / "SegmentationClassContext" / f"{image_id}.png"), lab)
    return voc


def test_pascal_context_59(tmp_path):
    _pascal_tree(tmp_path)
    cfg = {"seed": 0, "data": {"name": "pascal_context", "root": str(tmp_path), "crop": [32, 32], "batch_size": 2,
                               "size_divisor": 16}}
    b = datasets.build(cfg)
    assert b.num_classes == 59 and len(b.class_names) == 59 and b.palette.shape == (59, 3)
    assert b.class_names[0] == "aeroplane" and b.class_names[-1] == "wood"
    raw = datasets.build({**cfg, "data": {**cfg["data"], "size_divisor": None}}).val[0]
    assert raw["name"] == "2008_000007"
    assert raw["label"][0, ::14].tolist() == [255, 0, 58, 255]       # 0 -> ignore, 1..59 -> 0..58
    assert b.val[0]["image"].shape[-2:] == (32, 48)                    # floor to multiples of 16
    sizes = datasets.build({**cfg, "data": {**cfg["data"], "size_divisor": None, "crop": None, "scale": None}})
    batch = next(iter(sizes.train_loader(generator=torch.Generator().manual_seed(0))))
    assert batch["image"].shape[-2:] == (48, 56)                       # variable sizes padded
    assert (batch["label"][:, 40:] == 255).sum() >= 8 * 56


# --- bad input -----------------------------------------------------------------------------------
def test_missing_cityscapes_root_names_layout_and_generator(tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    for root in (str(tmp_path / "nope"), None):
        with pytest.raises(DatasetError) as err:
            datasets.build({"data": {"name": "cityscapes", "root": root}})
        msg = str(err.value)
        assert "\n" not in msg and "leftImg8bit/{train,val}" in msg and "python -m datasets.synthetic" in msg


def test_cityscapes_root_from_environment(tree, monkeypatch):
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tree))
    b = datasets.build({"seed": 0, "data": {"name": "cityscapes", "root": None, "crop": [32, 32], "batch_size": 2}})
    assert len(b.train) == 6 and b.name == "cityscapes"


def test_bad_label_value_names_the_file(tree_copy):
    path = _files(tree_copy, "train", "label")[0]
    lab = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 40
    cv2.imwrite(path, lab)
    with pytest.raises(DatasetError, match=r"labelIds\.png: label values \[40\]") as err:
        datasets.build(_cfg(tree_copy)).train[0]
    assert path in str(err.value)


def test_size_mismatch_names_the_file(tree_copy):
    path = _files(tree_copy, "val", "label")[0]
    cv2.imwrite(path, np.full((32, 32), 7, np.uint8))
    with pytest.raises(DatasetError, match="does not match") as err:
        datasets.build(_cfg(tree_copy)).val[0]
    assert path in str(err.value)


def test_unreadable_files_name_the_file(tree_copy):
    img = _files(tree_copy, "train", "image")[1]
    with open(img, "wb") as fh:
        fh.write(b"not a png")
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        datasets.build(_cfg(tree_copy)).train[1]
    assert img in str(err.value)
    lab = _files(tree_copy, "train", "label")[2]
    cv2.imwrite(lab, np.zeros((*SIZE, 3), np.uint8))
    with pytest.raises(DatasetError, match="single-channel") as err:
        datasets.build(_cfg(tree_copy)).train[2]
    assert lab in str(err.value)


def test_missing_label_and_empty_split(tree_copy):
    lab = _files(tree_copy, "val", "label")[0]
    os.remove(lab)
    with pytest.raises(DatasetError, match="label file not found") as err:
        datasets.build(_cfg(tree_copy))
    assert lab in str(err.value)
    shutil.rmtree(tree_copy / "leftImg8bit" / "val")
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        datasets.build(_cfg(tree_copy))


def test_pascal_context_bad_inputs(tmp_path):
    with pytest.raises(DatasetError, match="SegmentationContext"):
        datasets.build({"data": {"name": "pascal_context", "root": str(tmp_path / "none")}})
    voc = _pascal_tree(tmp_path, values=(0, 1, 60, 255))
    b = datasets.build({"data": {"name": "pascal_context", "root": str(voc), "crop": [16, 16], "batch_size": 1}})
    with pytest.raises(DatasetError, match=r"values \[60\] are not in the Pascal-Context 59 table"):
        b.val[0]
    os.remove(voc / "JPEGImages" / "2008_000003.jpg")
    with pytest.raises(DatasetError, match="2008_000003.jpg: listed in"):
        datasets.build({"data": {"name": "pascal_context", "root": str(voc)}})
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n")
    (voc / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000002\n")
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        datasets.build({"data": {"name": "pascal_context", "root": str(voc)}})


@pytest.mark.parametrize("data, key", [
    ({"crop": [0, 64]}, "data.crop"),
    ({"name": "kitti"}, "data.name"),
    ({"scale": [2.0, 0.5]}, "data.scale"),
    ({"max_class_ratio": 0}, "data.max_class_ratio"),
    ({"crop_size": [64, 64]}, "data.crop_size"),
    ({"workers": -1}, "data.workers"),
    ({"flip": "yes"}, "data.flip"),
    ({"generate": {"train": 0}}, "data.generate.train"),
    ({"generate": {"size": "big"}}, "data.generate.size"),
    ({"generate": {"trains": 3}}, "data.generate.trains"),
])
def test_bad_config_names_the_key(tree, data, key):
    with pytest.raises(DatasetError) as err:
        datasets.build(_cfg(tree, **data))
    assert str(err.value).startswith(key + ":") and "\n" not in str(err.value)


def test_batch_larger_than_train_set_is_an_error(tree):
    with pytest.raises(DatasetError, match="data.batch_size: 7 exceeds the 6 training images"):
        datasets.build(_cfg(tree, batch_size=7)).train_loader()
