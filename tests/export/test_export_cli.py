"""`loftup export` end to end: success with parity in the metadata, parity failure (non-zero exit,
no file unless --force), atomic output, and every bad-argument case failing in one line."""

from __future__ import annotations

import pytest
from cli_support import assert_one_line_error as _assert_error
from cli_support import run
from export_helpers import C

pytestmark = pytest.mark.export

SMALL = ["--min-size", "28", "--opt-size", "56", "--max-size", "84", "--max-batch", "2"]


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_export_official_checkpoint_without_backbone(tmp_path, capsys, official_dir):
    """An official-layout checkpoint and no backbone: C comes from the weights, scope defaults
    to upsampler, parity is checked and stored, the file appears only when complete."""
    from loftup.export.onnx import read_metadata
    from loftup.export.parity import ParityResult
    from loftup.io import file_sha256

    official = official_dir / "loftup_tiny.safetensors"
    out = tmp_path / "engines" / "tiny.onnx"
    code, stdout, err = run(["export", "--checkpoint", official, "--out", out, *SMALL], capsys)
    assert code == 0, err
    assert "wrote" in stdout and "parity passed" in stdout
    assert "1x56x56" in err and "[ok]" in err  # the per-shape parity report
    md = read_metadata(out)
    assert md.scope == "upsampler" and md.feat_dim == C and md.backbone is None
    assert md.source_checkpoint == official.name and md.source_sha256 == file_sha256(official)
    assert md.parity["passed"] is True and len(md.parity["shapes"]) == 3
    restored = ParityResult.from_dict(md.parity)
    assert restored and restored.precision == "fp32" and restored.to_dict() == md.parity
    assert any(s["height"] % 2 for s in md.parity["shapes"])  # an odd size among the three
    assert max(s["batch"] for s in md.parity["shapes"]) == 2
    assert leftovers(out.parent) == []
    # an existing file is not overwritten without --force
    code, _, err = run(["export", "--checkpoint", official, "--out", out, *SMALL], capsys)
    assert_one_line_error(code, err, "already exists", "--force")


def test_parity_failure_exits_nonzero_and_leaves_nothing(tmp_path, capsys, checkpoint, monkeypatch):
    from loftup.export import parity
    from loftup.export.onnx import read_metadata

    monkeypatch.setitem(parity.TOLERANCES, "fp32", parity.Tolerance(max_abs=1e-9, mean_cos=1.0, min_cos=1.0))
    out = tmp_path / "strict.onnx"
    code, _, err = run(["export", "--checkpoint", checkpoint, "--scope", "upsampler", "--out", out, *SMALL], capsys)
    assert_one_line_error(code, err, "parity failed", "--force")
    assert "[FAIL]" in err
    assert not out.exists() and leftovers(tmp_path) == []
    code, stdout, err = run(["export", "--checkpoint", checkpoint, "--scope", "upsampler", "--out", out, "--force", *SMALL], capsys)
    assert code == 0, err
    assert out.exists() and "FAILED" in stdout
    assert read_metadata(out).parity["passed"] is False  # the failure is recorded with the engine
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--format", "trt"], ["pip install tensorrt", "NVIDIA GPU"]),
        (["--format", "onxx"], ["unknown export format", "did you mean 'onnx'"]),
        (["--precision", "bf16"], ["does not take precision 'bf16'", "--format trt"]),
        (["--precision", "fp8"], ["unknown precision"]),
        (["--opset", "20", "--attention", "op"], ["opset >= 23"]),
        (["--opset", "12"], ["opset 12 is not supported"]),
        (["--scope", "everything"], ["unknown scope"]),
        (["--min-size", "200", "--max-size", "100"], ["min-size <= opt-size <= max-size"]),
        (["--scope", "pipeline"], ["needs --backbone"]),
        (["--backbone", "dinov4_vits16", "--scope", "pipeline"], ["unknown backbone", "did you mean 'dinov3_vits16'"]),
        (["--out", "x.plan"], ["does not end in .onnx"]),
    ],
)
def test_bad_export_arguments_fail_in_one_line(tmp_path, capsys, checkpoint, args, needles, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, as on our machines
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["export", "--checkpoint", checkpoint, *args], capsys)
    assert_one_line_error(code, err, *needles)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.plan"))


def test_missing_checkpoint_and_conflicting_sources(tmp_path, capsys, checkpoint):
    code, _, err = run(["export", "--scope", "upsampler"], capsys)
    assert_one_line_error(code, err, "--checkpoint", "--random-init")
    code, _, err = run(["export", "--checkpoint", tmp_path / "nope.bin", "--scope", "upsampler"], capsys)
    assert_one_line_error(code, err, "nope.bin")
    code, _, err = run(["export", "--checkpoint", checkpoint, "--random-init"], capsys)
    assert_one_line_error(code, err, "exclude each other")


def assert_one_line_error(code, err, *needles):
    """Export may print warnings before its one error line."""
    _assert_error(code, err, *needles, only_line=False)
