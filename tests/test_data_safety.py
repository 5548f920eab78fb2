"""Issue 11, output safety: no input or result is overwritten or lost, writability is checked
before the work, nonsense values are refused, and folder runs report bad files and go on."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, run
from PIL import Image
from safetensors.torch import load_file

from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

UPSAMPLE = ["upsample", "--backbone", "dinov2_vits14", "--weights", "random", "--size", "42", "--input-size", "28"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(LoftUp(LoftUpConfig(feat_dim=384, backbone="dinov2_vits14")),
                           tmp_path_factory.mktemp("ckpt") / "up.safetensors")


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(folder / "x.png")
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(folder / "x.jpg")
    return folder


@pytest.fixture()
def unwritable(tmp_path, monkeypatch):
    """A folder that reports itself unwritable (os.access), also when the tests run as root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    real = os.access

    def access(path, mode, *a, **k):
        if os.path.realpath(path) == str(folder.resolve()) and mode & os.W_OK:
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    return folder


def test_upsample_refuses_to_write_over_its_inputs(photos, capsys, ckpt):
    Image.fromarray(np.full((40, 60, 3), 30, np.uint8)).save(photos / "a.png")  # its picture would be a.png
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    code, _, err = run(UPSAMPLE + [photos, "--checkpoint", ckpt, "--out", photos, "--no-features"], capsys)
    assert_one_line_error(code, err, "would overwrite the input image", "a.png")
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # nothing touched


def test_same_stem_inputs_get_distinct_outputs(photos, tmp_path, capsys, ckpt):
    out = tmp_path / "out"
    code, stdout, err = run(UPSAMPLE + [photos, "--checkpoint", ckpt, "--out", out], capsys)
    assert code == 0, err
    assert "wrote 2 feature file(s)" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["x_jpg.png", "x_jpg.safetensors", "x_png.png", "x_png.safetensors"]
    a, b = (load_file(out / f"x_{e}.safetensors")["hr_feats"] for e in ("jpg", "png"))
    assert not torch.equal(a, b)  # two different images, two different results


def test_a_bad_file_in_a_folder_is_reported_and_the_rest_processed(photos, tmp_path, capsys, ckpt):
    (photos / "broken.jpg").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(photos / "tiny.png")
    out = tmp_path / "out"
    code, stdout, err = run(UPSAMPLE + [photos, "--checkpoint", ckpt, "--out", out, "--no-picture"], capsys)
    assert_one_line_error(code, err, "wrote 2 feature file(s)", "2 input(s) failed", "broken.jpg", "tiny.png")
    assert sorted(p.name for p in out.iterdir()) == ["x_jpg.safetensors", "x_png.safetensors"]


def test_export_checks_the_out_folder_before_work(tmp_path, capsys, unwritable, monkeypatch):
    import loftup.export.exporter as exporter

    monkeypatch.setattr(exporter, "load_model_and_backbone", lambda opts: pytest.fail("loaded a model before checking --out"))
    code, _, err = run(["export", "--random-init", "--feat-dim", "32", "--scope", "upsampler", "--out", unwritable / "m.onnx"], capsys)
    assert_one_line_error(code, err, "not writable", "--out")
    assert list(unwritable.iterdir()) == []


@pytest.mark.parametrize("what", ["unwritable", "file", "existing-json"])
def test_bench_checks_out_before_benchmarking(tmp_path, capsys, unwritable, monkeypatch, what):
    import loftup.bench.harness as harness

    monkeypatch.setattr(harness, "measure_gemm_peak", lambda *a, **k: pytest.fail("benchmarked before checking --out"))
    out = {"unwritable": unwritable, "file": tmp_path / "f.txt", "existing-json": tmp_path / "old.json"}[what]
    if what != "unwritable":
        out.write_text("keep me")
    code, _, err = run(["bench", "--random-init", "--sizes", "28", "--precisions", "fp32", "--backends", "torch-sdpa",
                        "--out", out], capsys)
    assert_one_line_error(code, err, str(out.name))
    if what != "unwritable":
        assert out.read_text() == "keep me"


@pytest.mark.parametrize("flag, value", [("--repeats", "0"), ("--warmup", "-1"), ("--max-seconds", "0")])
def test_bench_refuses_nonsense_counts(tmp_path, capsys, flag, value):
    code, _, err = run(["bench", "--random-init", "--sizes", "28", "--out", tmp_path / "o", flag, value], capsys)
    assert_one_line_error(code, err, flag)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize("flag", ["--size", "--input-size", "--epochs", "--max-eval"])
def test_eval_refuses_nonpositive_sizes(tmp_path, capsys, flag, value):
    code, _, err = run(["eval", "--probe", "mini", "--baselines", "bilinear", "--out", tmp_path / "o", flag, value], capsys)
    assert_one_line_error(code, err, flag, "positive")
    assert not (tmp_path / "o").exists()


def test_eval_out_problems_leave_nothing(tmp_path, capsys, unwritable):
    blocker = tmp_path / "results"
    blocker.write_text("keep me")
    code, _, err = run(["eval", "--probe", "mini", "--baselines", "bilinear", "--out", blocker], capsys)
    assert_one_line_error(code, err, "is a file")
    assert blocker.read_text() == "keep me"
    code, _, err = run(["eval", "--probe", "mini", "--baselines", "bilinear", "--out", unwritable / "new"], capsys)
    assert_one_line_error(code, err, "not writable")
    assert not (unwritable / "new").exists()
