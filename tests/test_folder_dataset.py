"""The folder dataset (`data.name: folder`) and CamVid (`data.name: camvid`): layouts, label decoding,
the checks before Ray starts (one line, exit code 2 from the real CLIs), a corrupt file failing only
its trial, and one training step on the real CamVid copy when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import datasets
from conftest import tiny_run_config
from datasets import DatasetError
from datasets.folder import LabelDecoder, parse_folder_config

CLASSES = ["sky", "road", "car"]
PALETTE = [[128, 128, 128], [128, 64, 128], [64, 0, 128]]
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
SIZE = 64


def raw_label(seed: int, values=(0, 1, 2, 11, 255), dtype=np.uint8) -> np.ndarray:
    """A label map whose four quadrants hold known values, plus a random speckle of all of them."""
    lab = np.empty((SIZE, SIZE), dtype)
    h = SIZE // 2
    lab[:h, :h], lab[:h, h:], lab[h:, :h], lab[h:, h:] = values[0], values[1], values[2], values[3 % len(values)]
    rng = np.random.default_rng(seed)
    mask = rng.random((SIZE, SIZE)) < 0.05
    lab[mask] = rng.choice(np.asarray(values, dtype), size=int(mask.sum()))
    return lab


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def write_label(path: Path, lab: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(lab, cv2.COLOR_RGB2BGR) if lab.ndim == 3 else lab
    assert cv2.imwrite(str(path), out)


def make_folder_dataset(root: Path, n_train: int = 4, n_val: int = 2, label_fn=raw_label, image_suffix=".png",
                        label_suffix=".png") -> dict[str, list[np.ndarray]]:
    """images/{split}/img_<i><image_suffix> + labels/{split}/img_<i><label_suffix>; returns the raw labels."""
    raws: dict[str, list[np.ndarray]] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        raws[split] = []
        for i in range(n):
            seed = (split == "val") * 100 + i
            write_image(root / "images" / split / f"img_{i}{image_suffix}", seed)
            lab = label_fn(seed)
            write_label(root / "labels" / split / f"img_{i}{label_suffix}", lab)
            raws[split].append(lab)
    return raws


def folder_cfg(root: Path, num_classes: int = 3, **folder) -> dict:
    """The toy run config (1 epoch of 2 steps on 64x64 crops) on a folder dataset."""
    cfg = tiny_run_config(root, **{"model.num_classes": num_classes, "budget.epochs": 1,
                                   "budget.iters_per_epoch": 2, "data.batch_size": 2, "data.val_batch_size": 2})
    cfg["data"].update({"name": "folder", "generate": None, "scale": None,
                        "folder": {"classes": CLASSES, "label_map": {11: "ignore"}, **folder}})
    return cfg


def expected(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, -1, np.int64)
    for value, target in table.items():
        out[raw == value] = target
    assert (out >= 0).all(), "the test's table misses a raw value"
    return out


# --- layouts and label decoding --------------------------------------------------------------
def test_folder_layout_decodes_known_pixels_through_label_map_and_ignore(tmp_path):
    raws = make_folder_dataset(tmp_path)
    data = datasets.build(folder_cfg(tmp_path))
    assert (len(data.train), len(data.val), data.num_classes, data.class_names) == (4, 2, 3, CLASSES)
    assert [s.name for s in data.train.samples] == ["img_0", "img_1", "img_2", "img_3"]
    # 0..2 are classes, 11 -> ignore (label_map), 255 -> ignore (ignore_index)
    table = {0: 0, 1: 1, 2: 2, 11: 255, 255: 255}
    for split, ds in (("train", data.train), ("val", data.val)):
        for i, raw in enumerate(raws[split]):
            image, label = ds.load(i)
            assert image.shape == (SIZE, SIZE, 3) and label.dtype == np.uint8
            np.testing.assert_array_equal(label, expected(raw, table))
    # a known pixel of each quadrant (unless the speckle hit it)
    raw, label = raws["val"][0], data.val.load(0)[1]
    for (y, x), (value, want) in {(1, 1): (0, 0), (1, 40): (1, 1), (40, 1): (2, 2), (40, 40): (11, 255)}.items():
        assert raw[y, x] != value or label[y, x] == want
    # the palette is a default one (none given) with one distinct colour per class
    assert data.palette.shape == (3, 3) and len({tuple(c) for c in data.palette}) == 3
    item = data.val[0]
    assert item["label"].dtype.is_floating_point is False and set(item["label"].unique().tolist()) <= {0, 1, 2, 255}


def test_zero_background_shift_rest_is_one_line(tmp_path):
    values = (0, 1, 2, 3)
    raws = make_folder_dataset(tmp_path, label_fn=lambda s: raw_label(s, values))
    label_map = yaml.safe_load("{0: ignore, 1..3: 0}")      # the one line of docs/datasets.md
    data = datasets.build(folder_cfg(tmp_path, label_map=label_map))
    for i, raw in enumerate(raws["train"]):
        np.testing.assert_array_equal(data.train.load(i)[1], expected(raw, {0: 255, 1: 0, 2: 1, 3: 2}))


def test_list_file_pairs_and_stems_match_the_folder_layout(tmp_path):
    make_folder_dataset(tmp_path)
    (tmp_path / "train.txt").write_text("".join(f"images/train/img_{i}.png labels/train/img_{i}.png\n"
                                                for i in (2, 0)) + "# a comment\n\n")
    (tmp_path / "val.txt").write_text("img_1\nimg_0\n")     # stems: the split's folders + suffixes
    listed = datasets.build(folder_cfg(tmp_path, train={"list": "train.txt"}, val={"list": "val.txt"}))
    folders = datasets.build(folder_cfg(tmp_path))
    assert [s.name for s in listed.train.samples] == ["img_2", "img_0"]      # list order is kept
    assert [s.name for s in listed.val.samples] == ["img_1", "img_0"]
    for listed_ds, folder_ds, pairs in ((listed.train, folders.train, [(0, 2), (1, 0)]),
                                        (listed.val, folders.val, [(0, 1), (1, 0)])):
        for li, fi in pairs:
            assert listed_ds.samples[li] == folder_ds.samples[fi]
            np.testing.assert_array_equal(listed_ds.load(li)[1], folder_ds.load(fi)[1])


def test_suffixes_and_16_bit_label_maps(tmp_path):
    values = (1000, 2000, 2001, 65535)
    raws = make_folder_dataset(tmp_path, label_fn=lambda s: raw_label(s, values, np.uint16),
                               image_suffix=".jpg", label_suffix="_mask.png")
    assert cv2.imread(str(tmp_path / "labels/train/img_0_mask.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    data = datasets.build(folder_cfg(tmp_path, image_suffix=".jpg", label_suffix="_mask.png", ignore_index=65535,
                                     label_map={1000: 0, "2000..2001": 1}))
    for i, raw in enumerate(raws["train"]):
        np.testing.assert_array_equal(data.train.load(i)[1], expected(raw, {1000: 0, 2000: 1, 2001: 2, 65535: 255}))


def test_colour_label_maps_through_the_palette(tmp_path):
    colours = np.array(PALETTE + [[0, 0, 0]], np.uint8)          # black = void

    def colour_label(seed):
        return colours[raw_label(seed, (0, 1, 2, 3))]

    raws = make_folder_dataset(tmp_path, label_fn=colour_label)
    data = datasets.build(folder_cfg(tmp_path, palette=PALETTE, label_map={"0,0,0": "ignore"}))
    np.testing.assert_array_equal(data.palette, np.array(PALETTE, np.uint8))
    for i, raw in enumerate(raws["train"]):
        index = np.full(raw.shape[:2], -1)
        for k, c in enumerate(colours):
            index[(raw == c).all(-1)] = [0, 1, 2, 255][k]
        np.testing.assert_array_equal(data.train.load(i)[1], index)
    # a colour outside the palette names the file and the colour
    bad = colour_label(7)
    bad[0, 0] = (10, 20, 30)
    write_label(tmp_path / "labels/train/img_1.png", bad)
    with pytest.raises(DatasetError, match=r"img_1\.png: colours \[\[10, 20, 30\]\] are outside the 3 declared"):
        data.train.load(1)


def test_label_map_keys_survive_a_json_round_trip_and_bad_keys_are_one_line():
    fc = parse_folder_config("folder", {"classes": CLASSES, "label_map": {"11": "ignore", "1..2": 0}})
    dec = LabelDecoder(fc)
    assert dec.lut[[0, 1, 2, 11, 255, 3]].tolist() == [0, 0, 1, 255, 255, -1]
    for folder, msg in [({"classes": CLASSES, "label_map": {"5..2": 0}}, "data.folder.label_map.5..2: expected a range lo..hi"),
                        ({"classes": CLASSES, "label_map": {4: 3}}, "data.folder.label_map.4: -> 3 is not a class index 0..2"),
                        ({"classes": CLASSES, "label_map": {"1..3": 1}}, "1..3 -> 1..3 is not a class index"),
                        ({"classes": CLASSES, "palette": PALETTE[:2]}, "data.folder.palette: 2 colours for 3 classes"),
                        ({"classes": ["a", "a"]}, "data.folder.classes: class names must be unique"),
                        ({"classes": ["a(b)"]}, "data.folder.classes: class 0 'a(b)'"),
                        ({"classes": CLASSES, "train": {"imgs": "x"}}, "data.folder.train.imgs: unknown key"),
                        ({}, "data.folder.classes: required key is missing")]:
        with pytest.raises(DatasetError) as err:
            parse_folder_config("folder", folder)
        assert msg in str(err.value) and "\n" not in str(err.value)


# --- checks before Ray starts: one line, exit code 2 ------------------------------------------
def write_space(tmp_path: Path, cfg: dict, name: str = "folder-search", **extra) -> Path:
    space = {
        "experiment": {"name": name, "storage_path": str(tmp_path / "ray_results"),
                       "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "base": cfg,
        "space": {"optim.lr": {"type": "float", "low": 0.005, "high": 0.05, "log": True}},
        "search": {"sampler": "random", "seed": 0, "num_samples": 2, "max_concurrent": 2},
        "scheduler": {"name": "none", "max_t": 1},
        "resources": {"cpu": 1, "gpu": 0},
        "failure": {"max_retries": 0},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def broken(tmp_path: Path, what: str) -> tuple[dict, str]:
    """A dataset with one kind of bad input, its config, and the line the checks must print."""
    root = tmp_path / "data"
    make_folder_dataset(root, n_train=5)
    cfg = folder_cfg(root)
    if what == "missing root":
        cfg["data"]["root"] = str(tmp_path / "nowhere")
        return cfg, f"error: data.root: '{tmp_path / 'nowhere'}' is not a folder"
    if what == "missing split":
        os.rename(root / "images" / "val", root / "images" / "validation")
        return cfg, f"error: data.folder.val.images: folder {root / 'images' / 'val'} not found"
    if what == "missing list":
        cfg["data"]["folder"]["val"] = {"list": "val.txt"}
        return cfg, f"error: data.folder.val.list: list file {root / 'val.txt'} not found"
    if what == "unlabelled":
        for i in (1, 3):
            (root / "labels" / "train" / f"img_{i}.png").unlink()
        return cfg, (f"error: data.folder.train.labels: 2 of 5 images have no label file (first missing: "
                     f"{root / 'labels' / 'train' / 'img_1.png'}; data.folder.label_suffix '.png')")
    if what == "outside classes":
        path = root / "labels" / "val" / "img_1.png"
        write_label(path, raw_label(0, (0, 1, 7, 9)))
        return cfg, (f"error: {path}: label values [7, 9] are outside the 3 declared classes "
                     f"(data.folder.classes); map them with data.folder.label_map (e.g. {{7: ignore}})")
    if what == "num_classes":
        cfg["model"]["num_classes"] = 19
        return cfg, "data.folder.classes declares 3 classes (sky, road, car)"
    raise AssertionError(what)


BAD = ["missing root", "missing split", "missing list", "unlabelled", "outside classes", "num_classes"]


@pytest.mark.parametrize("what", BAD)
def test_bad_input_is_one_line_exit_2_from_the_search_dry_run(tmp_path, capsys, what):
    from hpo import search

    cfg, line = broken(tmp_path, what)
    assert search.main([str(write_space(tmp_path, cfg)), "--dry-run"]) == 2
    got = one_error_line(capsys)
    if what == "num_classes":         # the space check names where in the space file the key lives
        assert got == f"error: base.model.num_classes: 19, but {line}"
    else:
        assert got == line


@pytest.mark.parametrize("what", ["unlabelled", "outside classes"])
def test_bad_input_is_one_line_exit_2_before_ray_starts(tmp_path, capsys, what):
    import ray

    from hpo import search

    cfg, line = broken(tmp_path, what)
    was_up = ray.is_initialized()
    assert search.main([str(write_space(tmp_path, cfg)), "--no-report"]) == 2
    assert one_error_line(capsys) == line
    assert ray.is_initialized() == was_up
    assert not (tmp_path / "ray_results" / "folder-search").exists()


@pytest.mark.parametrize("what", ["missing split", "num_classes"])
def test_bad_input_is_one_line_exit_2_from_hpo_train(tmp_path, capsys, monkeypatch, what):
    from hpo import train

    monkeypatch.chdir(tmp_path)
    cfg, line = broken(tmp_path, what)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert train.main([str(path), "--out", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/ml.db"]) == 2
    got = one_error_line(capsys)
    assert got == (f"error: model.num_classes: 19, but {line}" if what == "num_classes" else line)


def test_undecodable_file_during_training_is_one_error_naming_it(tmp_path):
    make_folder_dataset(tmp_path)
    data = datasets.build(folder_cfg(tmp_path))
    label = tmp_path / "labels" / "train" / "img_2.png"
    label.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    image = tmp_path / "images" / "val" / "img_1.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(DatasetError, match=rf"^{label}: cannot decode label image \(corrupt or not an image\)$"):
        data.train[2]
    with pytest.raises(DatasetError, match=rf"^{image}: cannot decode image"):
        data.val[1]
    assert data.train[1]["label"].shape == (SIZE, SIZE)     # the other files still load


@pytest.mark.slow
def test_corrupt_file_fails_only_its_trial(ray_local, tmp_path, capsys, monkeypatch):
    """Two trials over two roots; one root holds an image that cannot be decoded (the checks before
    Ray read label files only): that trial fails with one error naming the file, the other completes."""
    from mlflow.tracking import MlflowClient

    from hpo import search

    monkeypatch.chdir(tmp_path)
    good, bad = tmp_path / "good", tmp_path / "bad"
    make_folder_dataset(good)
    make_folder_dataset(bad)
    corrupt = bad / "images" / "train" / "img_0.png"
    corrupt.write_bytes(b"not a png at all")
    cfg = folder_cfg(good)
    space = write_space(tmp_path, cfg, name="corrupt")
    raw = yaml.safe_load(space.read_text())
    raw["space"] = {"data.root": {"type": "categorical", "choices": [str(good), str(bad)]}}
    raw["search"]["points_to_evaluate"] = [{"data.root": str(good)}, {"data.root": str(bad)}]
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert search.main([str(space), "--no-report"]) == 0      # the search runs to its end
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("corrupt")
    runs = client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''", max_results=10)
    by_root = {r.data.params["data.root"]: r for r in runs}
    assert set(by_root) == {str(good), str(bad)}
    assert by_root[str(good)].data.tags["status"] == "completed"
    ious = {k for k in by_root[str(good)].data.metrics if k.startswith("iou_")}
    assert ious and ious <= {f"iou_{c}" for c in CLASSES}       # the dataset's class names
    from hpo.results.report_page import per_class_html
    from hpo.results.handle import find_search

    table = per_class_html(find_search("corrupt", storage_path=str(tmp_path / "ray_results"),
                                       tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert [table.index(f">{c}</td>") for c in CLASSES] == sorted(table.index(f">{c}</td>") for c in CLASSES)
    failed = by_root[str(bad)].data.tags
    assert failed["status"] == "failed"
    assert f"{corrupt}: cannot decode image (corrupt or not an image)" in failed["error"]


# --- class names and palette everywhere -----------------------------------------------------------
def test_train_and_evaluate_use_the_dataset_class_names_and_palette(tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from hpo import evaluate, train

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    make_folder_dataset(root)
    cfg = folder_cfg(root, palette=PALETTE)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    uri = f"sqlite:///{tmp_path}/ml.db"
    assert train.main([str(path), "--out", str(tmp_path / "out"), "--tracking-uri", uri,
                       "--experiment", "folder"]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[0] for line in printed.splitlines()[-3:]] == CLASSES     # the per-class table
    client = MlflowClient(uri)
    run, = client.search_runs([client.get_experiment_by_name("folder").experiment_id])
    assert {k for k in run.data.metrics if k.startswith("iou_")} <= {f"iou_{c}" for c in CLASSES}
    assert any(k.startswith("iou_") for k in run.data.metrics)

    export = tmp_path / "export"
    assert evaluate.main([str(path), "--checkpoint", str(tmp_path / "out" / "last.pt"), "--export-dir",
                          str(export)]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[0] for line in printed.splitlines()[1:4]] == CLASSES
    assert f"{export}/labels" in printed
    for i in range(2):
        pred = cv2.imread(str(export / "labels" / f"img_{i}.png"), cv2.IMREAD_UNCHANGED)
        assert pred.shape == (SIZE, SIZE) and set(np.unique(pred).tolist()) <= {0, 1, 2}
        over = cv2.cvtColor(cv2.imread(str(export / "overlays" / f"img_{i}.png")), cv2.COLOR_BGR2RGB)
        image = cv2.cvtColor(cv2.imread(str(root / "images" / "val" / f"img_{i}.png")), cv2.COLOR_BGR2RGB)
        # an overlay pixel is the blend of the image and the palette colour of the predicted class
        y, x = 5, 7
        want = np.rint(0.5 * image[y, x].astype(float) + 0.5 * np.array(PALETTE[pred[y, x]]))
        np.testing.assert_allclose(over[y, x], want, atol=2)


# --- CamVid --------------------------------------------------------------------------------------
def test_camvid_preset_needs_a_root(monkeypatch, tmp_path):
    monkeypatch.delenv("CAMVID_DATASET", raising=False)
    with pytest.raises(DatasetError, match=r"^data.root: not set and \$CAMVID_DATASET is empty; expected "):
        datasets.build({"data": {"name": "camvid"}})
    monkeypatch.setenv("CAMVID_DATASET", str(tmp_path))
    with pytest.raises(DatasetError, match=rf"^data.folder.train.images: folder {tmp_path / 'train'} not found"):
        datasets.build({"data": {"name": "camvid"}})


def test_camvid_layout_and_root_from_the_environment_reach_the_trials(tmp_path, monkeypatch):
    from hpo.training.prepare import prepare_data

    values = (0, 3, 10, 11)
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            write_image(tmp_path / split / f"0001TP_{i:06d}.png", i)
            write_label(tmp_path / f"{split}annot" / f"0001TP_{i:06d}.png", raw_label(i, values))
    monkeypatch.setenv("CAMVID_DATASET", str(tmp_path))
    base = {"model": {"num_classes": 11}, "data": {"name": "camvid"}}
    prepare_data(base)
    assert base["data"]["root"] == str(tmp_path)      # trials on any node read the same root
    data = datasets.build(base)
    raw = raw_label(0, values)
    np.testing.assert_array_equal(data.train.load(0)[1], expected(raw, {0: 0, 3: 3, 10: 10, 11: 255}))
    assert data.class_names[10] == "Bicyclist" and data.palette[0].tolist() == [128, 128, 128]
    base["model"]["num_classes"] = 12
    with pytest.raises(DatasetError, match=r"^model.num_classes: 12, but the camvid preset declares 11 classes"):
        datasets.build(base)


def test_the_docs_camvid_example_builds_the_same_dataset_as_the_preset(tmp_path):
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    block = re.search(r"```yaml\n(data:\n  name: folder\n.*?)```", doc, re.S).group(1)
    cfg = yaml.safe_load(block.replace("/data/CamVid", str(tmp_path)).replace("{num_classes: 11, ...}",
                                                                               "{num_classes: 11}"))
    for split, n in (("train", 3), ("val", 2)):
        lines = []
        for i in range(n):
            name = f"0001TP_{i:06d}.png"
            write_image(tmp_path / split / name, i)
            write_label(tmp_path / f"{split}annot" / name, raw_label(i, (1, 4, 8, 11)))
            lines.append(f"{split}/{name} {split}annot/{name}\n")
        (tmp_path / f"{split}.txt").write_text("".join(lines))
    datasets.preflight(cfg)
    listed, preset = datasets.build(cfg), datasets.build({"data": {"name": "camvid", "root": str(tmp_path)}})
    assert listed.class_names == preset.class_names and (listed.palette == preset.palette).all()
    assert [s.label for s in listed.train.samples] == [s.label for s in preset.train.samples]
    np.testing.assert_array_equal(listed.val.load(1)[1], preset.val.load(1)[1])
    assert 255 in listed.val.load(1)[1]


@pytest.mark.skipif(not CAMVID.is_dir(), reason="no CamVid copy at ../shared/data/camvid")
def test_camvid_trains_a_step_with_its_class_names(monkeypatch):
    from hpo.config import load_yaml, set_key
    from hpo.training.trainer import Trainer

    monkeypatch.setenv("CAMVID_DATASET", str(CAMVID))
    cfg = load_yaml(Path(__file__).resolve().parents[1] / "search_spaces/configs/msglore_camvid_toy.yaml")
    for key, value in {"budget.epochs": 1, "budget.iters_per_epoch": 1, "data.batch_size": 2,
                       "runtime.device": "cpu"}.items():
        set_key(cfg, key, value)
    datasets.preflight(cfg)
    trainer = Trainer(cfg, log=lambda *_: None)
    data = trainer.data
    assert (len(data.train), len(data.val)) == (367, 101)
    assert data.class_names[:4] == ["Sky", "Building", "Pole", "Road"] and data.num_classes == 11
    assert data.palette[3].tolist() == [128, 64, 128]            # Road
    # raw 11 (void) -> ignore, 0..10 unchanged, on a real file
    sample = data.val.samples[0]
    raw = cv2.imread(sample.label, cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw).tolist()) <= set(range(12))
    label = data.val.load(0)[1]
    np.testing.assert_array_equal(label, np.where(raw == 11, 255, raw))
    # the same pairs through the folder dataset and CamVid's own list file
    listed = datasets.build({"data": {"name": "folder", "root": str(CAMVID), "folder": {
        "train": {"list": "train.txt"}, "val": {"list": "val.txt"}, "classes": data.class_names,
        "label_map": {11: "ignore"}}}})
    assert [s.label for s in listed.val.samples] == [s.label for s in data.val.samples]
    seen = []
    trainer.fit(lambda tr, metrics, val: seen.append((metrics, val)))
    metrics, val = seen[-1]
    assert trainer.step == 1 and np.isfinite(metrics["train_loss"])
    assert list(val.per_class_iou) == data.class_names
    assert 0 <= metrics["val_miou"] <= 100
