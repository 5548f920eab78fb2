"""`loftup eval --backbone dinov3_vits16` (the row swapped for a tiny random DINOv3): a probe on
the seg fixture, and an upsampler trained for another width refused in one line."""

import json

import pytest
import torch
from cli_support import assert_one_line_error, run
from dinov3_support import use_tiny_dinov3

from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = ["--probe", "seg", "--backbone", "dinov3_vits16", "--weights", "random", "--size", "32", "--epochs", "2",
        "--lr", "1e-2", "--batch-size", "4"]


def test_seg_probe_with_a_dinov3_backbone(tmp_path, capsys, monkeypatch, coco_dir):
    use_tiny_dinov3(monkeypatch)
    code, stdout, err = run(["eval", "--random-init", "--data", coco_dir, *ARGS, "--baselines", "bilinear",
                             "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["metrics"]) == {"loftup-random", "bilinear"}
    assert all(0.0 <= m["miou"] <= 1.0 for m in res["metrics"].values())
    assert "| loftup-random" in stdout and "| bilinear" in stdout


def test_an_upsampler_of_another_width_is_refused(tmp_path, capsys, monkeypatch, coco_dir):
    use_tiny_dinov3(monkeypatch)
    torch.manual_seed(0)
    ckpt = save_checkpoint(LoftUp(LoftUpConfig(feat_dim=16)), tmp_path / "c16.safetensors")
    code, _, err = run(["eval", "--checkpoint", ckpt, "--data", coco_dir, *ARGS], capsys)
    assert_one_line_error(code, err, "upsamples 16-channel features but backbone 'dinov3_vits16' gives 32")
