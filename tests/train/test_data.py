"""Data: SA-1B layout (files and tar shards), COCO, superpixels, corrupt inputs, sampling order."""

import json
import tarfile

import numpy as np
import pytest
import torch
from train_helpers import sa1b_json, write_photos, write_sa1b

from loftup.errors import ConfigError, InputError
from loftup.train.data import MaskedImageDataset, SampleSpec, StepSampler, collate, discover

H, W = 60, 80  # image size of the SA-1B fixture


def gt_masks() -> list[np.ndarray]:
    m = np.zeros((5, H, W), dtype=bool)
    m[0, 5:25, 15:45] = True  # rectangle
    m[1, 30:55, 50:75] = True
    m[2, :, 0:8] = True  # entirely left of the 60 x 60 center crop (x 10..70): dropped
    # m[3] stays empty: dropped
    yy, xx = np.mgrid[:H, :W]
    m[4] = (yy - 30) ** 2 + (xx - 40) ** 2 < 15**2  # a disc overlapping the first rectangle
    return list(m)


def fixture_image() -> np.ndarray:
    img = np.full((H, W, 3), 128, dtype=np.uint8)
    img[5:25, 15:45] = (255, 0, 0)
    return img


def expected(m: np.ndarray, size: int) -> np.ndarray:
    """Nearest-pixel samples of the 60 x 60 center crop at size x size (hand-derived index map)."""
    step = 60 // size
    ys = np.arange(size) * step + step // 2
    xs = 10 + np.arange(size) * step + step // 2
    return m[np.ix_(ys, xs)]


@pytest.fixture
def sa1b_dir(tmp_path):
    d = tmp_path / "sa1b"
    write_sa1b(d, "sa_1", fixture_image(), gt_masks())
    return d


def check_item(item, size):
    gts = [expected(m, size) for m in gt_masks()]
    keep = [g for g in gts if g.any()]
    assert item["masks"].shape == (3, size, size)  # masks 2 (outside) and 3 (empty) dropped
    for got, want in zip(item["masks"].numpy(), keep):
        assert np.array_equal(got, want)
    # the image went through the same box: inside the red rectangle (away from edges) it is red
    img = item["image"] * torch.tensor(SampleSpec().std).view(3, 1, 1) + torch.tensor(SampleSpec().mean).view(3, 1, 1)
    core = np.zeros((H, W), dtype=bool)
    core[8:22, 18:42] = True  # the red rectangle shrunk by 3 px (resampling blends its edges)
    inner = torch.from_numpy(expected(core, size))
    red = img[:, inner]
    assert (red[0] > 0.85).all() and (red[1] < 0.2).all()


def test_sa1b_folder_parses_to_the_right_masks(sa1b_dir):
    index = discover(sa1b_dir)
    assert len(index.records) == 1 and index.records[0].mask_kind == "sa1b"
    ds = MaskedImageDataset(index.records, SampleSpec(stage=1))
    check_item(ds[(0, 30, 0)], 30)
    check_item(ds[(0, 60, 0)], 60)  # identity scale: masks are the crop of the originals


def test_sa1b_tar_shard_is_read_in_place(sa1b_dir, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    other = sa1b_json("sa_2.jpg", gt_masks(), 2)
    (sa1b_dir / "sa_2.json").write_text(json.dumps(other))
    (sa1b_dir / "sa_2.jpg").write_bytes((sa1b_dir / "sa_1.jpg").read_bytes())
    with tarfile.open(shards / "sa_000000.tar", "w") as tf:
        for name in ("sa_1.jpg", "sa_1.json", "sa_2.jpg", "sa_2.json"):
            tf.add(sa1b_dir / name, arcname=name)
    index = discover(shards)
    assert [r.key for r in index.records] == ["sa_000000.tar:sa_1.jpg", "sa_000000.tar:sa_2.jpg"]
    assert all(r.mask_kind == "sa1b" and r.image.offset >= 0 for r in index.records)
    ds = MaskedImageDataset(index.records, SampleSpec(stage=1))
    for i in range(2):
        check_item(ds[(i, 30, 0)], 30)
    # nothing was unpacked
    assert sorted(p.name for p in shards.iterdir()) == ["sa_000000.tar"]


def test_max_masks_keeps_the_first_nonempty_in_file_order(sa1b_dir):
    index = discover(sa1b_dir)
    item = MaskedImageDataset(index.records, SampleSpec(max_masks=2))[(0, 30, 0)]
    assert item["masks"].shape[0] == 2
    assert np.array_equal(item["masks"][1].numpy(), expected(gt_masks()[1], 30))


def test_stage2_teacher_crops_sample_the_footprint(sa1b_dir):
    index = discover(sa1b_dir)
    spec = SampleSpec(stage=2, crops_per_image=3, teacher_size=40, teacher_scale=(2.0, 4.0), mask_max_res=20)
    ds = MaskedImageDataset(index.records, spec)
    item = ds[(0, 30, 5)]
    assert item["t_images"].shape == (3, 3, 40, 40) and item["t_masks"].shape[-2:] == (20, 20)
    for (oy, ox, s), tm in zip(item["t_boxes"].tolist(), item["t_masks"]):
        assert 8 <= s <= 15 and 0 <= oy <= 30 - s and 0 <= ox <= 30 - s  # s = 30 / t, t in [2, 4]
        # teacher pixel centres, mapped back into the 80 x 60 image, pick the ground-truth pixel
        c = (np.arange(20) + 0.5) / 20
        ys = np.floor((oy + c * s) * 2).astype(int)
        xs = np.floor(10 + (ox + c * s) * 2).astype(int)
        want = [g[np.ix_(ys, xs)] for g in gt_masks()]
        want = [w for w in want if w.any()]
        got = [m for m in tm.numpy() if m.any()]
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_coco_instances(tmp_path):
    root = tmp_path / "coco"
    (root / "train").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(fixture_image()).save(root / "train" / "000001.jpg")
    crowd = np.zeros((H, W), dtype=np.uint8)
    crowd[30:55, 50:75] = 1
    from loftup.train.rle import rle_encode

    ann = {
        "images": [{"id": 1, "file_name": "000001.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 1, "iscrowd": 0, "segmentation": [[15, 5, 45, 5, 45, 25, 15, 25]]},
            {"id": 2, "image_id": 1, "iscrowd": 1, "segmentation": rle_encode(crowd, compressed=False)},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(json.dumps(ann))
    index = discover(root)
    assert [r.mask_kind for r in index.records] == ["coco"]
    item = MaskedImageDataset(index.records, SampleSpec())[(0, 30, 0)]
    assert np.array_equal(item["masks"][0].numpy(), expected(gt_masks()[0], 30))
    assert np.array_equal(item["masks"][1].numpy(), expected(gt_masks()[1], 30))
    with pytest.raises(InputError, match="coco-json"):
        discover(tmp_path / "coco" / "train", masks="coco")


def test_plain_folder_gets_superpixels_and_corrupt_files_are_skipped(tmp_path):
    d = tmp_path / "photos"
    write_photos(d, n=4, side=48)
    (d / "img_001.png").write_bytes(b"not a png at all")
    write_sa1b(d, "sa_9", fixture_image(), gt_masks())
    (d / "sa_9.json").write_text("{ truncated")
    index = discover(d)
    kinds = {r.key: r.mask_kind for r in index.records}
    assert kinds["img_000.jpg"] == "felzenszwalb" and kinds["sa_9.jpg"] == "sa1b"
    ds = MaskedImageDataset(index.records, SampleSpec())
    keys = [r.key for r in index.records]
    item = ds[(keys.index("img_001.png"), 28, 0)]
    assert len(item["skipped"]) == 1 and "img_001.png" in item["skipped"][0]
    assert item["index"] == keys.index("img_001.png") + 1 and item["masks"].shape[0] >= 1
    item = ds[(keys.index("sa_9.jpg"), 28, 0)]
    assert "sa_9.jpg" in item["skipped"][0]  # corrupt JSON: skipped too
    batch = collate([ds[(i, 28, 0)] for i in range(len(ds))])
    assert batch["image"].shape == (5, 3, 28, 28) and len(batch["skipped"]) == 2


def test_discover_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="no usable training images"):
        discover(tmp_path / "empty")


def test_step_sampler_splits_global_batches_and_resumes():
    single = StepSampler(20, 4, [28, 42], seed=3, total_steps=12)
    r0 = StepSampler(20, 4, [28, 42], seed=3, rank=0, world=2, total_steps=12)
    r1 = StepSampler(20, 4, [28, 42], seed=3, rank=1, world=2, total_steps=12)
    for a, b, c in zip(single, r0, r1):
        assert sorted(a) == sorted(b + c) and len(b) == len(c) == 2
    assert len({b[0][1] for b in single}) == 2  # sizes drawn per step, shared by the batch
    # epochs: every image once per epoch (20 // 4 = 5 steps)
    first_epoch = [i for b in list(single)[:5] for i, _, _ in b]
    assert sorted(first_epoch) == list(range(20))
    resumed = StepSampler(20, 4, [28, 42], seed=3, start_step=7, total_steps=12)
    assert list(resumed) == list(single)[7:]
    with pytest.raises(ConfigError):
        StepSampler(20, 3, [28], world=2)
    with pytest.raises(InputError, match="batch"):
        StepSampler(3, 4, [28])


@pytest.mark.parametrize("hflip", [False, True])
def test_teacher_footprint_matches_student_pixels(sa1b_dir, hflip):
    # t = 2 and teacher size = footprint size: teacher pixels are exactly the student's pixels
    spec = SampleSpec(stage=2, crops_per_image=2, teacher_size=15, teacher_scale=(2.0, 2.0), mask_max_res=15, hflip=hflip)
    ds = MaskedImageDataset(discover(sa1b_dir).records, spec)
    s1 = MaskedImageDataset(discover(sa1b_dir).records, SampleSpec(stage=1, hflip=hflip))
    flipped = set()
    for seed in range(4):
        item, ref = ds[(0, 30, seed)], s1[(0, 30, seed)]
        student = ref["masks"].numpy()
        base = np.stack([expected(m, 30) for m in gt_masks() if expected(m, 30).any()])
        flipped.add(np.array_equal(student, base[:, :, ::-1]))
        assert np.array_equal(student, base) or (hflip and np.array_equal(student, base[:, :, ::-1]))
        for (oy, ox, s), tm in zip(item["t_boxes"].tolist(), item["t_masks"].numpy()):
            assert s == 15
            want = [m for m in student[:, oy : oy + s, ox : ox + s] if m.any()]
            got = [m for m in tm if m.any()]
            assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert flipped == ({False, True} if hflip else {False})
