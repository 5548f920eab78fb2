"""LiFT and FeatUp-JBU exported to ONNX like LoftUp: parity with PyTorch, the kind in the metadata,
outputs at the guidance size, JBU's adaptive convolution as one ONNX loop, one-line CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_support import assert_one_line_error, run
from export_helpers import MAX_BATCH, PARITY_SHAPES, SIZES, make_backbone

pytestmark = [pytest.mark.export, pytest.mark.usefixtures("one_thread")]

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "baselines"
SMALL = ["--min-size", "28", "--opt-size", "56", "--max-size", "84", "--max-batch", "2"]


def test_featup_jbu_export_cli_with_parity(tmp_path, capsys):
    """Official-layout JBU weights, upsampler scope: parity passes and is stored; the taps are a
    loop in the graph, not 2 x 4 x 49 unrolled groups; the engine answers at the guidance size."""
    from loftup.export.onnx import onnx_op_types, read_metadata

    out = tmp_path / "jbu.onnx"
    code, stdout, err = run(["export", "--upsampler", "featup_jbu", "--checkpoint", FIX / "featup_jbu_tiny.safetensors",
                             "--out", out, "--min-size", "28", "--opt-size", "42", "--max-size", "56", "--max-batch", "2"], capsys)
    assert code == 0, err
    assert "parity passed" in stdout and "featup_jbu" in err
    md = read_metadata(out)
    assert md.upsampler == "featup_jbu" and md.scope == "upsampler" and md.parity["passed"]
    assert md.model_config["feat_dim"] == 32 and md.input_shapes["lr_feats"]["min"][2:] == [2, 2]
    ops = onnx_op_types(out)
    assert ops.get("Loop", 0) + ops.get("Scan", 0) >= 8  # 4 stages x (range logits + adaptive conv)
    assert sum(ops.values()) < 1000
    # the parity shapes include odd, non-square images: the engine answered at those guidance sizes
    assert any(sh["height"] % 2 for sh in md.parity["shapes"]) and all(sh["passed"] for sh in md.parity["shapes"])


def test_lift_pipeline_export_with_parity(tmp_path):
    from loftup.export.exporter import export_model
    from loftup.model import build_upsampler

    torch.manual_seed(0)
    model = build_upsampler("lift", 32, patch_size=14)
    report = export_model(model, make_backbone(), tmp_path / "lift.onnx", scope="pipeline", sizes=SIZES, max_batch=MAX_BATCH,
                          parity_shapes=PARITY_SHAPES)
    assert report.parity and report.metadata.upsampler == "lift" and report.metadata.scope == "pipeline"
    assert report.parity.worst["max_abs"] < 1e-4


def test_cli_errors_are_one_line(tmp_path, capsys):
    jbu = FIX / "featup_jbu_tiny.safetensors"
    code, _, err = run(["export", "--upsampler", "lift", "--checkpoint", jbu, "--out", tmp_path / "x.onnx", *SMALL], capsys)
    assert_one_line_error(code, err, "holds a featup_jbu upsampler, not lift", "--upsampler featup_jbu")
    code, _, err = run(["export", "--upsampler", "lfit", "--random-init", "--feat-dim", "32", "--out", tmp_path / "x.onnx"], capsys)
    assert_one_line_error(code, err, "unknown upsampler kind 'lfit'", "did you mean 'lift'")
    code, _, err = run(["export", "--upsampler", "lift", "--random-init", "--feat-dim", "33", "--out", tmp_path / "x.onnx"], capsys)
    assert_one_line_error(code, err, "LiFT needs an even number of feature channels")
    bad = tmp_path / "bad.ckpt"
    from safetensors.torch import load_file

    torch.save({"state_dict": {f"net.{k}": v for k, v in load_file(jbu).items()}}, bad)
    code, _, err = run(["export", "--checkpoint", bad, "--out", tmp_path / "x.onnx"], capsys)
    assert_one_line_error(code, err, "under prefix 'net.'", "expected no prefix or 'upsampler.'")
    assert not list(tmp_path.glob("*.onnx"))
