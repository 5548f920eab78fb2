"""One data path: `loftup upsample --checkpoint`, the TorchEngine and the exported ONNX pipeline
feed the backbone the same pixels for an image whose sides are not patch multiples (333x517),
so their features agree within the fp32 export tolerance; `upsample --engine` runs the engine."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, run
from PIL import Image
from safetensors.torch import load_file

from loftup.backbones import register_backbone
from loftup.export.engine import load_engine
from loftup.export.parity import TOLERANCES, compare
from loftup.pipeline import prepare_image

SIZE = 70  # output shorter side: 333x517 -> 70x109, backbone 70x98 (5x7 tokens of 14 px)


@pytest.fixture(scope="module")
def odd_photo(tmp_path_factory):
    from loftup.io.samples import load_sample

    path = tmp_path_factory.mktemp("photo") / "odd.png"
    load_sample("coffee").resize((517, 333), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def engine_file(tmp_path_factory, backbone, checkpoint):
    """`loftup export` of the tiny checkpoint with the tiny backbone, as a user would run it."""
    register_backbone("dinov2_tiny", lambda weights: copy.deepcopy(backbone))
    out = tmp_path_factory.mktemp("engine") / "tiny.onnx"
    code = run_main(["export", "--checkpoint", checkpoint, "--backbone", "dinov2_tiny", "--scope", "pipeline",
                     "--min-size", "28", "--opt-size", "70", "--max-size", "128", "--max-batch", "2", "--out", out])
    assert code == 0 and out.exists()
    return out


def run_main(args):
    from loftup.cli import main

    return main([str(a) for a in args])


def test_upsample_torch_engine_and_onnx_agree_on_an_odd_size(tmp_path, capsys, odd_photo, engine_file, checkpoint):
    out = tmp_path / "ckpt"
    code, _, err = run(["upsample", odd_photo, "--backbone", "dinov2_tiny", "--checkpoint", checkpoint, "--size", SIZE,
                        "--input-size", SIZE, "--out", out, "--no-picture"], capsys)
    assert code == 0, err
    via_cli = load_file(out / "odd.safetensors")["hr_feats"][None]
    assert via_cli.shape == (1, 32, 70, 109)

    image = prepare_image(odd_photo, SIZE)  # the pipeline input: (1, 3, 70, 109)
    torch_engine = load_engine(checkpoint, backbone="dinov2_tiny", attn_backend="sdpa")
    onnx_engine = load_engine(engine_file)
    via_torch, via_onnx = torch_engine(image), onnx_engine(image)

    tol = TOLERANCES["fp32"]
    assert compare(via_torch, via_cli)["max_abs"] < 1e-5  # the same code path
    err_onnx = compare(via_onnx, via_torch)
    assert tol.passes(err_onnx), err_onnx
    assert err_onnx["min_cos"] >= 0.9999


def test_upsample_engine_matches_upsample_checkpoint(tmp_path, capsys, odd_photo, engine_file, checkpoint):
    args = [odd_photo, "--size", SIZE, "--no-picture"]
    code, _, err = run(["upsample", *args, "--backbone", "dinov2_tiny", "--checkpoint", checkpoint, "--input-size", SIZE,
                        "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    code, stdout, err = run(["upsample", *args, "--engine", engine_file, "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert "wrote 1 feature file(s)" in stdout
    a = load_file(tmp_path / "a" / "odd.safetensors")
    b = load_file(tmp_path / "b" / "odd.safetensors")
    assert set(b) == {"hr_feats"}  # an exported engine returns only its output
    err_ab = compare(b["hr_feats"][None], a["hr_feats"][None])
    assert err_ab["min_cos"] >= 0.9999 and TOLERANCES["fp32"].passes(err_ab), err_ab


def test_upsample_engine_threads_reach_onnx_runtime(tmp_path, capsys, odd_photo, engine_file, monkeypatch):
    """`upsample --engine x.onnx --threads 1`: the ONNX Runtime session runs one intra-op thread."""
    from loftup.export.onnx import OnnxEngine

    opened, real = [], OnnxEngine.__init__
    monkeypatch.setattr(OnnxEngine, "__init__", lambda self, *a, **k: opened.append(self) or real(self, *a, **k))
    before = torch.get_num_threads()
    try:
        code, _, err = run(["upsample", odd_photo, "--engine", engine_file, "--threads", "1", "--size", "42", "--no-picture",
                            "--out", tmp_path / "o"], capsys)
    finally:
        torch.set_num_threads(before)  # --threads also sets PyTorch's, process-wide
    assert code == 0, err
    (engine,) = opened
    assert engine.session.get_session_options().intra_op_num_threads == 1


def test_upsample_engine_pictures_and_folders(tmp_path, capsys, odd_photo, engine_file):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(odd_photo).save(folder / "a.png")
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(folder / "b.jpg")
    code, _, err = run(["upsample", folder, "--engine", engine_file, "--size", "42", "--batch-size", "2", "--out",
                        tmp_path / "o"], capsys)
    assert code == 0, err
    assert load_file(tmp_path / "o" / "b.safetensors")["hr_feats"].shape == (32, 42, 63)
    picture = Image.open(tmp_path / "o" / "a.png")
    assert picture.size[0] > 2 * 63  # input | LoftUp (no low-res panels from an engine)


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--input-size", "70"], ("--input-size", "engine")),
        (["--random-init"], ("exclude",)),
        (["--dtype", "bf16"], ("--dtype",)),
        (["--size", "300"], ("outside this engine's range",)),
    ],
)
def test_upsample_engine_refusals(tmp_path, capsys, odd_photo, engine_file, extra, needles):
    code, _, err = run(["upsample", odd_photo, "--engine", engine_file, "--out", tmp_path / "o", *extra], capsys)
    assert_one_line_error(code, err, *needles)
    assert not list((tmp_path / "o").glob("*.safetensors")) if (tmp_path / "o").exists() else True


def test_upsample_engine_refuses_an_upsampler_scope_engine(tmp_path, capsys, odd_photo, exports):
    code, _, err = run(["upsample", odd_photo, "--engine", exports[("upsampler", "matmul", "fp32")], "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "upsampler engine", "--scope pipeline")


# -- issue 30: one backbone-input rule on every path ------------------------------------------
@pytest.fixture(scope="module")
def engine_42(tmp_path_factory, engine_file, checkpoint):
    """`loftup export --input-size 42`: a smaller backbone input, traced into the graph."""
    out = tmp_path_factory.mktemp("engine42") / "tiny42.onnx"
    code = run_main(["export", "--checkpoint", checkpoint, "--backbone", "dinov2_tiny", "--scope", "pipeline", "--input-size", "42",
                     "--min-size", "28", "--opt-size", "70", "--max-size", "128", "--max-batch", "2", "--out", out])
    assert code == 0 and out.exists()
    return out


def test_default_options_agree_on_every_path(tmp_path, capsys, odd_photo, engine_file, checkpoint, backbone):
    """upsample --checkpoint and --engine at default options, and eval's feature sources, on a non-square photo."""
    from loftup.eval.runner import runner_input_size
    from loftup.eval.upsamplers import BackboneRunner, EngineFeatures, LoftUpFeatures, open_engine
    from loftup.model import load_checkpoint

    for name, source in (("a", ["--checkpoint", checkpoint, "--backbone", "dinov2_tiny"]), ("b", ["--engine", engine_file])):
        code, _, err = run(["upsample", odd_photo, "--size", SIZE, "--no-picture", *source, "--out", tmp_path / name], capsys)
        assert code == 0, err
    a, b = (load_file(tmp_path / n / "odd.safetensors")["hr_feats"][None] for n in "ab")
    assert a.shape == (1, 32, 70, 109)
    err_ab = compare(b, a)
    assert err_ab["min_cos"] >= 0.9999 and TOLERANCES["fp32"].passes(err_ab), err_ab

    image = prepare_image(odd_photo, SIZE)
    handle = open_engine(engine_file)
    via_eval = LoftUpFeatures(BackboneRunner(backbone, runner_input_size(None, None)), load_checkpoint(checkpoint)).features(image)
    via_eval_engine = EngineFeatures(BackboneRunner(backbone, runner_input_size(None, handle)), handle).features(image)
    assert compare(via_eval, a)["max_abs"] < 1e-4  # eval's PyTorch path is upsample's
    assert compare(via_eval_engine, a)["min_cos"] >= 0.9999

    import loftup

    via_api = loftup.load("dinov2_tiny", checkpoint, size=SIZE)(odd_photo)  # the Python API at its defaults
    assert compare(via_api, a)["max_abs"] < 1e-4
    assert compare(via_api, b)["min_cos"] >= 0.9999


def test_export_input_size_is_recorded_and_applied_by_the_graph(tmp_path, capsys, odd_photo, engine_42, checkpoint):
    """An engine exported with --input-size 42 reproduces `upsample --checkpoint --input-size 42`, not the default."""
    engine = load_engine(engine_42)
    assert engine.metadata.input_size == 42
    image = prepare_image(odd_photo, SIZE)  # 70x109: the backbone sees 42x65 -> 42x56 (3x4 tokens)
    small = load_engine(checkpoint, backbone="dinov2_tiny", attn_backend="sdpa")
    small.pipeline.input_size = 42
    default = load_engine(checkpoint, backbone="dinov2_tiny", attn_backend="sdpa")
    out = engine(image)
    assert TOLERANCES["fp32"].passes(compare(out, small(image)))
    assert not TOLERANCES["fp32"].passes(compare(out, default(image)))  # the graph does not fall back to the default rule

    args = [odd_photo, "--size", SIZE, "--no-picture"]
    code, _, err = run(["upsample", *args, "--backbone", "dinov2_tiny", "--checkpoint", checkpoint, "--input-size", "42",
                        "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    code, _, err = run(["upsample", *args, "--engine", engine_42, "--input-size", "42", "--out", tmp_path / "b"], capsys)
    assert code == 0, err  # the engine's own rule may be named
    a, b = (load_file(tmp_path / n / "odd.safetensors")["hr_feats"][None] for n in "ab")
    assert compare(b, a)["min_cos"] >= 0.9999
    code, _, err = run(["upsample", *args, "--engine", engine_42, "--input-size", "70", "--out", tmp_path / "c"], capsys)
    assert_one_line_error(code, err, "input size 42", "--input-size 70")


def test_eval_takes_a_pipeline_engines_rule_and_refuses_another(engine_42, backbone):
    from loftup.errors import ConfigError
    from loftup.eval.runner import runner_input_size
    from loftup.eval.upsamplers import BackboneRunner, check_engine_fits, open_engine

    handle = open_engine(engine_42)
    assert runner_input_size(None, handle) == 42  # its reference then sees what the graph sees
    check_engine_fits(handle, "dinov2_tiny", BackboneRunner(backbone, 42))
    with pytest.raises(ConfigError, match="input size 42"):
        check_engine_fits(handle, "dinov2_tiny", BackboneRunner(backbone, None))


def test_input_size_is_refused_for_an_upsampler_engine(tmp_path, capsys, checkpoint):
    code, _, err = run(["export", "--checkpoint", checkpoint, "--scope", "upsampler", "--input-size", "42",
                        "--out", tmp_path / "u.onnx"], capsys)
    assert_one_line_error(code, err, "--input-size 42", "pipeline engine", "upsampler engine")
    assert not (tmp_path / "u.onnx").exists()
