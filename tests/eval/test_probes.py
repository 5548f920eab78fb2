"""Each probe on a fixture in its public layout: perfect features give perfect scores."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_fixtures import OracleSource

from loftup.errors import ConfigError
from loftup.eval import datasets as D
from loftup.eval import probes as P
from loftup.backbones import create_backbone
from loftup.eval.upsamplers import (
    BackboneRunner,
    LoftUpFeatures,
    make_baseline,
)


class BlindSource(OracleSource):
    """Features that carry no information (constant)."""

    def features(self, image, out_size=None):
        f = super().features(image, out_size)
        return torch.ones_like(f)


def run(task_name, train, val, source, **cfg):
    cfg = P.probe_config(task_name, size=32, **cfg)
    task = P.make_task(task_name, train.meta)
    head = P.train_head(task, source, train, cfg)
    return P.evaluate(task, {"s": head}, {"s": source}, val, cfg).metrics["s"]


def test_protocol_defaults_follow_the_paper():
    seg = P.probe_config("seg")
    assert (seg.size, seg.epochs, seg.batch_size, seg.lr) == (224, 10, 8, 1e-4)
    depth = P.probe_config("depth")
    assert (depth.lr, depth.epochs, depth.n_bins) == (5e-4, 10, 256)
    video = P.probe_config("video")
    assert (video.context, video.radius, video.topk, video.video_scale) == (7, 12, 5, 0.5)
    assert P.probe_config("seg", epochs=3, lr=None).epochs == 3  # None keeps the default
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        P.probe_config("dpeth")


def test_dpt_head_has_seven_convs():
    head = P.DPTHead(8, 3, 16)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in head.modules()) == 7
    assert head(torch.randn(2, 8, 5, 6)).shape == (2, 3, 5, 6)


@pytest.mark.parametrize("layout", ["coco", "city"])
def test_seg_probe_perfect_features_give_miou_1(layout, coco_dir, city_dir):
    root = coco_dir if layout == "coco" else city_dir
    train, val = D.open_segmentation(root, "train"), D.open_segmentation(root, "val")
    m = run("seg", train, val, OracleSource(), epochs=30, lr=5e-2, batch_size=3)
    assert m["miou"] == pytest.approx(1.0) and m["pixel_acc"] == pytest.approx(1.0)
    assert m["classes_present"] == 4  # the 23 / 15 absent classes are left out of the mean
    blind = run("seg", train, val, BlindSource(), epochs=5, lr=5e-2, batch_size=3)
    assert blind["miou"] < 0.5


def test_depth_probe_perfect_features(rgbd_dir):
    train, val = D.open_depth(rgbd_dir, "train"), D.open_depth(rgbd_dir, "val")
    m = run("depth", train, val, OracleSource("rgb"), epochs=60, lr=5e-3, batch_size=4, hidden_dim=32, n_bins=64)
    assert m["d3"] == 1.0 and m["d1"] > 0.98 and m["rmse"] < 0.06 and m["images"] == 2
    blind = run("depth", train, val, BlindSource("rgb"), epochs=10, lr=5e-3, batch_size=4, hidden_dim=8, n_bins=16)
    assert blind["rmse"] > 3 * m["rmse"]


def test_normals_probe_perfect_features(tmp_path, rgbd_dir):
    root = tmp_path / "normals"  # the images are the normal maps themselves
    shutil.copytree(rgbd_dir / "normal_images", root / "images")
    for sub in ("depth", "normals"):
        shutil.copytree(rgbd_dir / sub, root / sub)
    train, val = D.open_depth(root, "train"), D.open_depth(root, "val")
    m = run("normals", train, val, OracleSource("rgb"), epochs=60, lr=5e-3, batch_size=4, hidden_dim=32)
    assert m["recall_30"] >= 0.99 and m["rmse"] < 10
    blind = run("normals", train, val, BlindSource("rgb"), epochs=10, lr=5e-3, batch_size=4, hidden_dim=8)
    assert blind["rmse"] > 2 * m["rmse"]


def test_matting_probe_perfect_features(matting_dir):
    train, val = D.open_matting(matting_dir, "train"), D.open_matting(matting_dir, "val")
    m = run("matting", train, val, OracleSource("rgb"), epochs=40, lr=5e-2, batch_size=4)
    assert m["mse"] < 1e-3
    blind = run("matting", train, val, BlindSource("rgb"), epochs=10, lr=5e-2, batch_size=4)
    assert blind["mse"] > 20 * m["mse"]


def test_video_probe_perfect_features(davis_dir):
    videos = D.open_davis2017(davis_dir)
    res = P.evaluate_video({"oracle": OracleSource()}, videos, P.probe_config("video"))
    assert res.metrics["oracle"] == {"J": 1.0, "F": 1.0, "JF": 1.0, "objects": 4}
    assert res.samples and res.samples[0]["pred"]["oracle"].shape == (40, 40)


def test_label_propagation_follows_features_within_radius():
    # frame 0: a 2-pixel object at x=2..3; frame 1: the same object at x=5..6 (features move with it)
    feats = torch.zeros(2, 2, 1, 10)
    feats[:, 0] = 1.0
    feats[0, :, :, 2:4] = torch.tensor([0.0, 1.0])[:, None, None]
    feats[1, :, :, 5:7] = torch.tensor([0.0, 1.0])[:, None, None]
    first = P.onehot(torch.tensor([[0, 0, 1, 1, 0, 0, 0, 0, 0, 0]]), 2)
    out = P.propagate_labels(feats, first, context=7, radius=3, topk=2)
    assert out[1].argmax(0)[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    # radius 1: the object's new place is out of reach, its label cannot follow
    out = P.propagate_labels(feats, first, context=7, radius=1, topk=2)
    assert out[1].argmax(0)[0].tolist() == [0] * 10


def test_training_features_are_cached_and_heads_are_shared(coco_dir):
    """Train once on one source; evaluate that head on two sources with identical features."""
    runner = BackboneRunner(create_backbone("tiny_conv"))
    torch.manual_seed(0)
    from loftup.model import LoftUp, LoftUpConfig

    model = LoftUp(LoftUpConfig(feat_dim=16)).eval()
    a, b = LoftUpFeatures(runner, model, "a"), LoftUpFeatures(runner, model, "b")
    train, val = D.open_segmentation(coco_dir, "train"), D.open_segmentation(coco_dir, "val")
    cfg = P.probe_config("seg", size=32, epochs=2, lr=1e-2, batch_size=4)
    task = P.make_task("seg", train.meta)
    calls = {"n": 0}
    original = a.features

    def counting(image, out_size=None):
        calls["n"] += 1
        return original(image, out_size)

    a.features = counting
    head = P.train_head(task, a, train, cfg)
    assert calls["n"] == 2  # 6 images in batches of 4: computed in epoch 1 only
    res = P.evaluate(task, {"a": head, "b": head}, {"a": a, "b": b}, val, cfg, pairs=[("a", "b")])
    assert res.metrics["a"]["miou"] == res.metrics["b"]["miou"]
    (batch,) = res.parity["a~b"]
    assert batch["min_cos"] == pytest.approx(1.0) and batch["max_abs"] == 0.0


def test_baselines_shapes_and_low_res_prediction_resize(coco_dir):
    runner = BackboneRunner(create_backbone("tiny_conv"))
    x = torch.randn(2, 3, 32, 32)
    low, bil = make_baseline("lowres", runner), make_baseline("bilinear", runner)
    assert low.features(x).shape == (2, 16, 8, 8) and low.pred_resize == "nearest"
    assert bil.features(x).shape == (2, 16, 32, 32)
    assert make_baseline("bicubic", runner).features(x, (20, 24)).shape == (2, 16, 20, 24)
    near = make_baseline("nearest", runner).features(x)
    assert torch.equal(near, F.interpolate(low.features(x), size=(32, 32), mode="nearest"))
    train, val = D.open_segmentation(coco_dir, "train"), D.open_segmentation(coco_dir, "val")
    # The fixture's labels are 8 px blocks on the 4 px patch grid, so a low-res prediction resized
    # nearest is exact once the head has learned the colours; resizing it bilinearly would blur
    # every block border.
    m = run("seg", train, val, low, epochs=20, lr=5e-2, batch_size=6)
    assert m["miou"] == 1.0 and m["pixel_acc"] == 1.0
