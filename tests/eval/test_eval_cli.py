"""`loftup eval` end to end: engine vs reference parity on fixtures, and every bad-input case."""

import json

import pytest
import torch
from cli_support import assert_one_line_error, run

from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

FAST = ["--backbone", "tiny_conv", "--size", "32", "--epochs", "3", "--lr", "1e-2", "--batch-size", "4"]


def check_parity_fields(parity, probe, primary):
    assert parity["probe"] == probe and parity["primary_metric"] == primary
    assert set(parity["tolerance"]) == {"atol", "rtol", "rule"}
    assert primary in parity["reference"] and primary in parity["engine"] and primary in parity["delta"]
    fp = parity["feature_parity"]
    assert fp["batches"] >= 1 and {"min_cos", "mean_cos", "max_abs", "mean_abs"} <= set(fp)
    per_batch = parity["feature_parity_per_batch"]
    assert len(per_batch) == fp["batches"] and {"min_cos", "max_abs", "batch"} <= set(per_batch[0])


def test_checkpoint_engine_parity_on_seg(tmp_path, capsys, coco_dir, tiny_ckpt):
    out = tmp_path / "out"
    code, stdout, err = run(["eval", "--engine", tiny_ckpt, "--probe", "seg", "--data", coco_dir, *FAST,
                             "--baselines", "bilinear,lowres", "--out", out, "--plot"], capsys)
    assert code == 0, err
    assert "parity PASS" in stdout and "| reference" in stdout and "| lowres" in stdout
    res = json.loads((out / "results.json").read_text())
    parity = res["parity"]
    check_parity_fields(parity, "seg", "miou")
    assert parity["passed"] is True and parity["delta"]["miou"] == 0.0
    # the engine is the checkpoint's CPU inference variant (BatchNorm folded, fused linears): float32 rounding only
    assert parity["feature_parity"]["max_abs"] < 1e-4
    assert res["heads_trained_on"] == {"reference": "reference", "engine": "reference", "bilinear": "bilinear", "lowres": "lowres"}
    assert set(res["metrics"]) == {"reference", "engine", "bilinear", "lowres"}
    assert (out / "results.md").read_text().count("| delta") == 1
    assert (out / "seg_predictions.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def onnx_engine(tmp_path_factory, tiny_ckpt):
    export = pytest.importorskip("loftup.export.onnx")
    from loftup.model import load_checkpoint

    path = tiny_ckpt.parent / "tiny16.onnx"  # next to its reference: found from the metadata
    if not path.exists():
        export.export_onnx(load_checkpoint(tiny_ckpt), path, scope="upsampler", sizes=(16, 32, 64), max_batch=8,
                           source=tiny_ckpt, patch_size=4)
    return path


@pytest.mark.export
def test_onnx_engine_vs_reference_within_tolerance(tmp_path, capsys, coco_dir, onnx_engine):
    out = tmp_path / "out"
    code, _, err = run(["eval", "--engine", onnx_engine, "--probe", "seg", "--data", coco_dir, *FAST, "--out", out], capsys)
    assert code == 0, err
    parity = json.loads((out / "results.json").read_text())["parity"]
    check_parity_fields(parity, "seg", "miou")
    assert parity["passed"] is True
    ref, tol = parity["reference"]["miou"], parity["tolerance"]
    assert abs(parity["delta"]["miou"]) <= tol["atol"] + tol["rtol"] * abs(ref)
    assert parity["feature_parity"]["min_cos"] > 0.999 and parity["feature_parity"]["max_abs"] < 1e-2


@pytest.mark.export
def test_onnx_engine_parity_on_video(tmp_path, capsys, davis_dir, onnx_engine):
    out = tmp_path / "out"
    code, _, err = run(["eval", "--engine", onnx_engine, "--probe", "video", "--data", davis_dir, "--out", out,
                             "--baselines", "lowres"], capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    check_parity_fields(res["parity"], "video", "JF")
    assert {"J", "F", "JF"} <= set(res["metrics"]["engine"]) and res["metrics"]["lowres"]["objects"] == 4


def test_depth_probe_via_cli_with_checkpoint_engine(tmp_path, capsys, navi_dir, tiny_ckpt):
    out = tmp_path / "out"
    code, _, err = run(["eval", "--engine", tiny_ckpt, "--probe", "depth", "--data", navi_dir, *FAST,
                             "--hidden-dim", "8", "--out", out], capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    check_parity_fields(res["parity"], "depth", "rmse")
    assert res["config"]["hidden_dim"] == 8 and res["config"]["lr"] == 1e-2  # overrides reach the protocol


def test_engine_that_differs_from_its_reference_is_reported(tmp_path, capsys, coco_dir, tiny_ckpt):
    """The failing twin of test_checkpoint_engine_parity_on_seg: the same run with an engine of
    other weights, at the default tolerance, must fail."""
    torch.manual_seed(1)
    other = save_checkpoint(LoftUp(LoftUpConfig(feat_dim=16, backbone="tiny_conv")).eval(), tmp_path / "other.safetensors")
    out = tmp_path / "out"
    code, stdout, err = run(["eval", "--engine", other, "--reference", tiny_ckpt, "--probe", "seg", "--data", coco_dir,
                             *FAST, "--out", out], capsys)
    parity = json.loads((out / "results.json").read_text())["parity"]
    assert parity["feature_parity"]["max_abs"] > 0.1 and parity["feature_parity"]["min_cos"] < 0.99
    # other weights: the metrics move outside atol + rtol * |reference|, so the verb fails (exit 1) and says why
    tol, ref = parity["tolerance"], parity["reference"]
    assert any(abs(d) > tol["atol"] + tol["rtol"] * abs(ref[k]) for k, d in parity["delta"].items())
    assert code == 1 and parity["passed"] is False
    assert "parity FAIL" in stdout
    failing = [k for k, d in parity["delta"].items() if abs(d) > tol["atol"] + tol["rtol"] * abs(ref[k])]
    assert all(f"{k}: reference" in err for k in failing)  # each metric outside the tolerance is named


def test_checkpoint_and_random_init_modes(tmp_path, capsys, matting_dir, tiny_ckpt):
    code, stdout, err = run(["eval", "--checkpoint", tiny_ckpt, "--probe", "matting", "--data", matting_dir, *FAST,
                             "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    assert "| loftup" in stdout and "parity" not in stdout
    code, stdout, err = run(["eval", "--random-init", "--probe", "matting", "--data", matting_dir, *FAST,
                             "--baselines", "bicubic", "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert "| loftup-random" in stdout and "| bicubic" in stdout


# ----------------------------------------------------------------------------------------
# bad input: one line, no traceback


def test_dataset_in_the_wrong_layout(tmp_path, capsys, tiny_ckpt):
    (tmp_path / "data" / "photos").mkdir(parents=True)
    code, _, err = run(["eval", "--engine", tiny_ckpt, "--probe", "seg", "--data", tmp_path / "data", *FAST], capsys)
    assert_one_line_error(code, err, "not a segmentation dataset", "images/train2017/", "leftImg8bit/train/", "found: photos/")
    code, _, err = run(["eval", "--engine", tiny_ckpt, "--probe", "video", "--data", tmp_path / "data", *FAST], capsys)
    assert_one_line_error(code, err, "not a DAVIS-2017 folder", "JPEGImages/480p/")


def test_engine_channels_do_not_match_the_backbone(tmp_path, capsys, coco_dir):
    wide = save_checkpoint(LoftUp(LoftUpConfig(feat_dim=32, backbone="tiny_conv")), tmp_path / "wide.safetensors")
    code, _, err = run(["eval", "--engine", wide, "--probe", "seg", "--data", coco_dir, *FAST], capsys)
    assert_one_line_error(code, err, "upsamples 32-channel features", "'tiny_conv' gives 16")


def test_engine_backbone_does_not_match_the_pipeline(tmp_path, capsys, coco_dir, tiny_ckpt):
    code, _, err = run(["eval", "--engine", tiny_ckpt, "--probe", "seg", "--data", coco_dir, "--backbone", "tiny_conv_wide"], capsys)
    assert_one_line_error(code, err, "exported for backbone 'tiny_conv'", "uses 'tiny_conv_wide'", "--backbone tiny_conv")


def test_checkpoint_channels_do_not_match_the_backbone(tmp_path, capsys, coco_dir, tiny_ckpt):
    code, _, err = run(["eval", "--checkpoint", tiny_ckpt, "--probe", "seg", "--data", coco_dir, "--backbone", "tiny_conv_wide"], capsys)
    assert_one_line_error(code, err, "16-channel", "gives 32")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--probe", "segg", "--random-init"], ("unknown probe 'segg'", "did you mean 'seg'")),
        (["--probe", "seg", "--random-init"], ("needs a dataset", "--data DIR")),
        (["--probe", "mini", "--baselines", "bilinaer"], ("unknown baseline 'bilinaer'", "did you mean 'bilinear'")),
        (["--probe", "mini", "--weights", "random"], ("nothing to evaluate", "no trained weights ship")),
        (["--probe", "mini", "--random-init", "--checkpoint", "x.safetensors"], ("exclude each other",)),
        (["--probe", "mini", "--random-init", "--reference", "x.safetensors"], ("only used with --engine",)),
        (["--probe", "seg", "--layout", "ade20k", "--random-init"], ("unknown seg data layout 'ade20k'",)),
        (["--probe", "mini", "--engine", "missing.onnx"], ("engine missing.onnx does not exist",)),
    ],
)
def test_bad_options(args, needles, capsys):
    code, _, err = run(["eval", *args], capsys)
    assert_one_line_error(code, err, *needles)


def test_engine_without_its_reference(tmp_path, capsys, coco_dir, onnx_engine):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(onnx_engine.read_bytes())  # away from the checkpoint its metadata names
    code, _, err = run(["eval", "--engine", lone, "--probe", "seg", "--data", coco_dir, *FAST], capsys)
    assert_one_line_error(code, err, "tiny16.safetensors", "not here", "--reference")


def test_video_with_protocol_overrides_and_plot(tmp_path, capsys, davis_dir, tiny_ckpt):
    out = tmp_path / "out"
    code, stdout, err = run(["eval", "--checkpoint", tiny_ckpt, "--probe", "video", "--data", davis_dir, "--out", out,
                             "--set", "radius=4", "--set", "topk=3", "--set", "video_scale=0.25", "--plot"], capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert (res["config"]["radius"], res["config"]["topk"], res["config"]["context"]) == (4, 3, 7)
    assert "| loftup" in stdout and "J&F %" in stdout
    assert (out / "video_predictions.png").stat().st_size > 1000


def test_bad_protocol_setting(capsys):
    code, _, err = run(["eval", "--probe", "mini", "--random-init", "--set", "radious=3"], capsys)
    assert_one_line_error(code, err, "unknown probe setting 'radious'", "did you mean 'radius'")


@pytest.fixture(scope="module")
def pipeline_engine(tiny_ckpt):
    export = pytest.importorskip("loftup.export.onnx")
    from eval_fixtures import TinyConvBackbone

    from loftup.model import load_checkpoint

    path = tiny_ckpt.parent / "tiny16_pipeline.onnx"
    if not path.exists():
        export.export_onnx(load_checkpoint(tiny_ckpt), path, backbone=TinyConvBackbone(16, 4), scope="pipeline",
                           sizes=(16, 32, 64), max_batch=8, source=tiny_ckpt, patch_size=4)
    return path


@pytest.mark.export
def test_pipeline_engine_and_reference_resize_alike(tmp_path, capsys, coco_dir, pipeline_engine):
    """30 px images are not patch multiples: the engine resizes them for its backbone itself, and
    the reference must resize the same way, or preprocessing shows up as engine error (a bicubic
    reference resize measured 7.9e-2 max abs here, against 1.8e-3 with the engine's bilinear)."""
    out = tmp_path / "out"
    args = ["eval", "--engine", pipeline_engine, "--probe", "seg", "--data", coco_dir, *FAST, "--size", "30", "--out", out]
    code, _, err = run(args, capsys)
    assert code == 0, err
    parity = json.loads((out / "results.json").read_text())["parity"]
    assert parity["feature_parity"]["max_abs"] < 5e-3 and parity["feature_parity"]["min_cos"] > 0.99999
    assert parity["passed"] is True and parity["delta"]["miou"] == 0.0
    code, _, err = run(args[:-1] + [tmp_path / "out2", "--input-size", "28"], capsys)  # a fresh --out: results.json stays
    assert_one_line_error(code, err, "pipeline engine", "--input-size")
