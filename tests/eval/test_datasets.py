"""Dataset readers on fixtures written in the public layouts; wrong layouts fail with one clear error."""

import json
import shutil

import numpy as np
import pytest
from eval_fixtures import CITY_TRAIN, COCO_COARSE, S

from loftup.errors import InputError
from loftup.eval import datasets as D


def test_cocostuff27_table():
    lut = D.cocostuff27_lut()
    assert len(D.COCOSTUFF27_CLASSES) == 27
    assert (lut[:182] < 27).all() and (lut[182:] == 255).all()
    assert sorted(set(lut[:182].tolist())) == list(range(27))  # every coarse class has members
    name = lambda fine: D.COCOSTUFF27_CLASSES[lut[fine]]
    # fine labels are COCO-Stuff ids - 1: 0 person, 2 car, 15 bird, 62 chair, 123 grass, 156 sky-other, 181 wood
    assert [name(f) for f in (0, 2, 15, 62, 123, 156, 181)] == ["person", "vehicle", "animal", "furniture-things", "plant", "sky", "solid"]
    assert [name(f) for f in (100, 113, 170, 176, 179, 147, 94)] == ["floor", "floor", "wall", "wall", "window", "water", "building"]


def test_cityscapes_table():
    lut = D.cityscapes_lut()
    assert lut[7] == 0 and lut[8] == 1 and lut[26] == 13 and lut[33] == 18
    assert lut[0] == lut[6] == lut[9] == lut[29] == lut[30] == lut[34] == 255  # void / not evaluated
    assert sorted(lut[lut < 255].tolist()) == list(range(19))


def test_cocostuff_reader(coco_dir):
    train = D.open_segmentation(coco_dir, "train")
    val = D.open_cocostuff27(coco_dir.parent, "val")  # the parent of cocostuff/ works too (STEGO's root)
    assert (len(train), len(val)) == (6, 3)
    assert train.meta["num_classes"] == 27
    s = train[0]
    assert s["image"].shape == (S, S, 3) and s["image"].dtype == np.uint8
    assert set(np.unique(s["label"])) <= set(COCO_COARSE) | {255}
    assert (s["label"][:4, :4] == 255).all()


def test_cocostuff_curated_list(coco_dir):
    curated = coco_dir / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    curated.parent.mkdir(parents=True)
    for p in (coco_dir / "images" / "train2017").glob("*.png"):  # the curated list names .jpg files
        p.rename(p.with_suffix(".jpg"))
    curated.write_text("000000000001\n000000000003\n")
    assert [s["name"] for s in D.open_cocostuff27(coco_dir, "train")] == ["000000000001", "000000000003"]
    curated.write_text("000000000099\n")
    with pytest.raises(InputError, match="missing from"):
        D.open_cocostuff27(coco_dir, "train")


def test_cityscapes_reader(city_dir):
    train = D.open_segmentation(city_dir, "train")
    assert len(train) == 4 and train.meta["num_classes"] == 19
    label = train[0]["label"]
    assert set(np.unique(label)) <= set(CITY_TRAIN) | {255}
    assert (label[-4:, -4:] == 255).all()


def test_rgbd_reader_splits_and_reads_mm(rgbd_dir):
    train, val = D.open_depth(rgbd_dir, "train"), D.open_depth(rgbd_dir, "val")
    assert (len(train), len(val)) == (8, 2)  # every 5th image is val
    s = val[0]
    assert s["depth"].dtype == np.float32 and 0.5 <= s["depth"][4:, 4:].min() and s["depth"].max() <= 2.0
    assert (s["depth"][:2, :2] == 0).all()
    assert s["normals"].shape == (S, S, 3)


def test_rgbd_on_disk_splits_and_normals_from_intrinsics(tmp_path, rgbd_dir):
    root = tmp_path / "split"
    for split, names in (("train", ["000", "001"]), ("val", ["002"])):
        for sub in ("images", "depth"):
            (root / split / sub).mkdir(parents=True)
            for n in names:
                src = next((rgbd_dir / sub).glob(f"{n}.*"))
                shutil.copy(src, root / split / sub / src.name)
    (root / "intrinsics.json").write_text(json.dumps({"fx": 40.0}))
    val = D.open_rgbd_folder(root, "val")
    assert len(val) == 1 and len(D.open_rgbd_folder(root, "train")) == 2
    n = val[0]["normals"]  # computed from depth: each tile is a fronto-parallel plane -> (0, 0, -1)
    inner = n[10:14, 10:14].reshape(-1, 3)
    assert np.allclose(inner, [0, 0, -1], atol=1e-6)


def test_navi_reader(navi_dir):
    train, val = D.open_depth(navi_dir, "train"), D.open_navi(navi_dir, "val")
    assert (len(train), len(val)) == (8, 4)  # annotations.json: 2 of 3 images per scene are train
    assert train.meta["relative_depth"] is True
    s = val[0]
    assert s["name"].startswith("obj_a/")
    assert s["focal"] == pytest.approx(40.0) and s["normals"].shape == (S, S, 3)


def test_normals_from_depth_tilted_plane():
    H = W = 16
    _, u = np.mgrid[0:H, 0:W].astype(float)
    fx = 20.0
    # plane z = 1 + 0.5 * X  <=>  z = 1 / (1 - 0.5 (u - cx) / fx): normal ~ (0.5, 0, -1) normalised
    depth = 1.0 / (1 - 0.5 * (u - (W - 1) / 2) / fx)
    n = D.normals_from_depth(depth, fx)
    expected = np.array([0.5, 0, -1]) / np.linalg.norm([0.5, 0, -1])
    assert np.allclose(n[2:-2, 2:-2].reshape(-1, 3), expected, atol=1e-6)


def test_davis_reader(davis_dir):
    videos = D.open_davis2017(davis_dir, "val")
    assert [v.name for v in videos] == ["video0", "video1"]
    frames, labels, n_obj = videos[0].load()
    assert frames.shape == (6, 40, 40, 3) and labels.shape == (6, 40, 40) and n_obj == 2
    assert set(np.unique(labels)) == {0, 1, 2}


def test_matting_reader(matting_dir):
    train, val = D.open_matting(matting_dir, "train"), D.open_matting(matting_dir, "val")
    assert (len(train), len(val)) == (8, 2)
    s = train[0]
    assert s["alpha"].dtype == np.float32 and 0 <= s["alpha"].min() and s["alpha"].max() <= 1
    assert np.allclose(s["alpha"], s["image"][..., 0] / 255.0)


def test_matting_reads_rgba_alpha(tmp_path):
    from PIL import Image

    (tmp_path / "image").mkdir()
    (tmp_path / "matte").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "image" / "a.jpg")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 200
    Image.fromarray(rgba, "RGBA").save(tmp_path / "matte" / "a.png")
    s = D.open_matting(tmp_path, "train")[0]
    assert np.allclose(s["alpha"], 200 / 255)


def test_resize_sample_keeps_labels_exact():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (40, 60))
    image = rng.integers(0, 255, (40, 60, 3)).astype(np.uint8)
    out = D.resize_sample({"image": image, "label": label, "name": "x"}, 20)
    assert out["image"].shape == (20, 20, 3) and out["label"].shape == (20, 20)
    assert set(np.unique(out["label"])) <= set(range(5))  # nearest: no new values
    assert out["name"] == "x"


@pytest.mark.parametrize(
    "opener, needle",
    [
        (lambda p: D.open_segmentation(p), "not a segmentation dataset"),
        (lambda p: D.open_cocostuff27(p), "missing images/train2017/ and annotations/train2017/"),
        (lambda p: D.open_cityscapes(p), "missing leftImg8bit/train/ and gtFine/train/"),
        (lambda p: D.open_depth(p), "missing images/ (or rgb/) and depth/"),
        (lambda p: D.open_navi(p), "no OBJECT/SCENE/annotations.json"),
        (lambda p: D.open_davis2017(p), "missing JPEGImages/480p/ and Annotations/480p/ and ImageSets/2017/val.txt"),
        (lambda p: D.open_matting(p), "missing images/ and alpha/"),
    ],
)
def test_wrong_layout_names_what_is_missing(tmp_path, opener, needle):
    (tmp_path / "photos").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError) as err:
        opener(tmp_path)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert "found: photos/, readme.txt" in message


def test_missing_label_file_is_named(coco_dir):
    victim = coco_dir / "annotations" / "val2017" / "000000000001.png"
    victim.unlink()
    with pytest.raises(InputError, match="no stuffthingmap for 000000000001.png"):
        D.open_cocostuff27(coco_dir, "val")


def test_missing_davis_video_is_named(davis_dir):
    (davis_dir / "ImageSets" / "2017" / "val.txt").write_text("video0\nbreakdance\n")
    with pytest.raises(InputError, match="'breakdance'"):
        D.open_davis2017(davis_dir)


@pytest.mark.parametrize("reader, name, what", [
    (D.read_rgb, "x.png", "image"),
    (D.read_label_png, "x.png", "label map"),
    (D.read_depth, "x.png", "depth map"),
    (D.read_depth, "x.npy", "depth map"),
    (D.read_normals, "x.npy", "normal map"),
    (D.read_alpha, "x.png", "alpha matte"),
])
def test_damaged_file_is_named(tmp_path, reader, name, what):
    bad = tmp_path / name
    bad.write_bytes(b"not what the suffix says")
    with pytest.raises(InputError, match=f"cannot read {what} .*{name}.*replace or remove the file"):
        reader(bad)
