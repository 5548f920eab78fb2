"""`loftup eval` with LiFT and FeatUp-JBU: every probe and the mini benchmark, `--compare` writing one
table for several kinds, and the kind / channel errors in one line."""

from __future__ import annotations

import json

import pytest
import torch
from cli_support import assert_one_line_error, run

from loftup.model import build_upsampler, save_checkpoint

FAST = ["--backbone", "tiny_conv", "--size", "32", "--epochs", "2", "--lr", "1e-2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def kind_ckpts(tmp_path_factory):
    """Random-init LiFT and FeatUp-JBU for tiny_conv (16 channels, patch 4), in our format."""
    folder = tmp_path_factory.mktemp("kinds")
    out = {}
    for kind, extra in (("lift", {"patch_size": 4}), ("featup_jbu", {})):
        torch.manual_seed(0)
        out[kind] = save_checkpoint(build_upsampler(kind, 16, backbone="tiny_conv", **extra), folder / f"{kind}.safetensors")
    return out


def test_compare_writes_one_table(tmp_path, capsys, coco_dir, tiny_ckpt, kind_ckpts):
    out = tmp_path / "cmp"
    spec = f"loftup:{tiny_ckpt},lift:{kind_ckpts['lift']},featup_jbu:{kind_ckpts['featup_jbu']},bilinear"
    code, stdout, err = run(["eval", "--compare", spec, "--probe", "seg", "--data", coco_dir, *FAST, "--out", out], capsys)
    assert code == 0, err
    rows = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["loftup", "lift", "featup_jbu", "bilinear"]  # after the header row
    res = json.loads((out / "results.json").read_text())
    assert list(res["metrics"]) == ["loftup", "lift", "featup_jbu", "bilinear"]
    assert {res["upsamplers"][k]["upsampler"] for k in ("loftup", "lift", "featup_jbu")} == {"loftup", "lift", "featup_jbu"}
    assert all(0.0 <= res["metrics"][k]["miou"] <= 1.0 for k in res["metrics"])
    assert (out / "results.md").read_text().count("| featup_jbu") == 1


@pytest.mark.parametrize("probe,data,kind", [
    ("depth", "rgbd_dir", "featup_jbu"), ("normals", "rgbd_dir", "lift"), ("video", "davis_dir", "featup_jbu"),
    ("matting", "matting_dir", "lift"),
])
def test_every_probe_takes_the_kinds(tmp_path, capsys, request, kind_ckpts, probe, data, kind):
    root = request.getfixturevalue(data)
    extra = ["--max-eval", "1", "--max-train", "4", "--hidden-dim", "16", "--epochs", "1"]  # wiring, not accuracy
    code, stdout, err = run(["eval", "--upsampler", kind, "--checkpoint", kind_ckpts[kind], "--probe", probe, "--data", root,
                             *FAST, *extra, "--out", tmp_path / probe], capsys)
    assert code == 0, err
    assert f"| {kind}" in stdout


def test_mini_benchmark_with_the_kinds(tmp_path, capsys, kind_ckpts):
    code, stdout, err = run(["eval", "--probe", "mini", "--quick", "--backbone", "tiny_conv", "--compare",
                             f"lift:{kind_ckpts['lift']},featup_jbu:random,bilinear", "--out", tmp_path / "mini"], capsys)
    assert code == 0, err
    assert "| lift" in stdout and "| featup_jbu" in stdout and "| bilinear" in stdout


def test_kind_and_channel_errors_are_one_line(tmp_path, capsys, coco_dir, kind_ckpts):
    code, _, err = run(["eval", "--upsampler", "lift", "--checkpoint", kind_ckpts["featup_jbu"], "--probe", "seg",
                        "--data", coco_dir, *FAST], capsys)
    assert_one_line_error(code, err, "holds a featup_jbu upsampler, not lift", "--upsampler featup_jbu")
    wide = save_checkpoint(build_upsampler("featup_jbu", 32), tmp_path / "wide.safetensors")
    code, _, err = run(["eval", "--compare", f"featup_jbu:{wide}", "--probe", "seg", "--data", coco_dir, *FAST], capsys)
    assert_one_line_error(code, err, "upsamples 32-channel features", "'tiny_conv' gives 16")
    code, _, err = run(["eval", "--compare", "lift", "--probe", "mini"], capsys)
    assert_one_line_error(code, err, "needs its weights: lift:PATH")
    code, _, err = run(["eval", "--compare", "jbu:x.ckpt", "--probe", "mini"], capsys)
    assert_one_line_error(code, err, "unknown upsampler kind 'jbu'")
    code, _, err = run(["eval", "--compare", "lift:random", "--random-init", "--probe", "mini"], capsys)
    assert_one_line_error(code, err, "exclude each other")
