"""TensorRT builder and runtime against the fake `tensorrt` module (no GPU, no TensorRT here).

The fake records calls and checks what TensorRT would: flags, optimization profiles, workspace,
timing cache, precision pins, I/O binding by name and address (it runs the plan's ONNX graph on
the bound memory, so a wrong binding gives wrong numbers), version and profile refusals.
"""

from __future__ import annotations

import json

import pytest
import torch

from export_helpers import C, MAX_BATCH, PARITY_SHAPES, SIZES
from loftup.errors import CheckpointError, ConfigError, InputError
from loftup.export.engine import TorchEngine, load_engine, with_attention_backend
from loftup.export.onnx import read_metadata
from loftup.export.parity import check_parity
from loftup.export.tensorrt import TensorRTEngine, build_plan, float32_nodes, profiles_from_shapes, sidecar_path

pytestmark = pytest.mark.export


def _build(fake_trt, exports, tmp_path, precision="fp32", name="up", **kw):
    onnx_path = exports[("upsampler", "matmul", "fp32")]
    plan = tmp_path / f"{name}.plan"
    md = build_plan(onnx_path, plan, read_metadata(onnx_path), precision=precision, **kw)
    return plan, md, fake_trt.BUILDS[-1]


@pytest.mark.parametrize("precision, flag", [("fp16", "FP16"), ("bf16", "BF16")])
def test_builder_flags_profiles_workspace_and_float32_pins(fake_trt, exports, tmp_path, precision, flag):
    plan, md, build = _build(fake_trt, exports, tmp_path, precision, workspace_mb=512)
    assert {f.name for f in build["flags"]} == {flag, "OBEY_PRECISION_CONSTRAINTS"}
    assert build["workspace"] == 512 << 20
    # one profile = the metadata's min / opt / max ranges for both inputs
    shapes = read_metadata(exports[("upsampler", "matmul", "fp32")]).input_shapes
    assert build["profiles"] == [{n: [r["min"], r["opt"], r["max"]] for n, r in shapes.items()}]
    # the Fourier features (and everything that feeds them) are pinned to float32, convs are not
    assert build["sin_cos_layers"] and build["sin_cos_layers"] <= build["float32_layers"]
    assert all("conv" not in name.lower() for name in build["float32_layers"])
    pinned = build["output_types"]
    assert pinned and all(t == fake_trt.DataType.FLOAT for types in pinned.values() for t in types.values())
    calls = [c[0] for c in fake_trt.CALLS]
    assert calls.index("parser.parse_from_file") < calls.index("config.set_flag") < calls.index("builder.build_serialized_network")
    assert md.precision == precision and md.runtime["flags"] == [flag, "OBEY_PRECISION_CONSTRAINTS"]


def test_fp32_build_sets_no_precision_flags(fake_trt, exports, tmp_path):
    _, md, build = _build(fake_trt, exports, tmp_path, "fp32")
    assert build["flags"] == set() and build["float32_layers"] == set()
    assert md.runtime["flags"] == []


def test_plan_sidecar_has_metadata_and_build_info(fake_trt, exports, tmp_path):
    import hashlib

    plan, md, _ = _build(fake_trt, exports, tmp_path, "fp16")
    side = json.loads(sidecar_path(plan).read_text())
    assert sidecar_path(plan).name == "up.plan.json"
    assert side["format"] == "trt" and side["scope"] == "upsampler" and side["feat_dim"] == C and side["precision"] == "fp16"
    assert side["runtime"]["tensorrt"] == fake_trt.__version__
    assert side["runtime"]["gpu"] == "Fake GPU" and side["runtime"]["compute_capability"] == "8.9"
    assert side["runtime"]["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert side["input_shapes"]["image"]["max"] == [MAX_BATCH, 3, SIZES[2], SIZES[2]]


def test_timing_cache_is_reused_across_builds(fake_trt, exports, tmp_path):
    cache = tmp_path / "trt.cache"
    _build(fake_trt, exports, tmp_path, "fp32", name="a", timing_cache=cache)
    first = fake_trt.BUILDS[-1]
    assert cache.is_file() and first["cache_entries_loaded"] == 0 and first["cache_hits"] == 0
    _build(fake_trt, exports, tmp_path, "fp16", name="b", timing_cache=cache)
    second = fake_trt.BUILDS[-1]
    assert second["cache_entries_loaded"] > 0 and second["cache_hits"] > 0
    creates = [c for c in fake_trt.CALLS if c[0] == "config.create_timing_cache"]
    assert creates[0][1] == 0 and creates[1][1] > 0  # the second build was handed the first one's cache
    cache.write_bytes(b"garbage from another TensorRT")  # unusable cache: start afresh, still builds
    _build(fake_trt, exports, tmp_path, "fp32", name="c", timing_cache=cache)
    assert fake_trt.BUILDS[-1]["cache_entries_loaded"] == 0


def test_several_profiles_and_profile_selection(fake_trt, exports, model, tmp_path):
    md = read_metadata(exports[("upsampler", "matmul", "fp32")])
    profiles = profiles_from_shapes(md.input_shapes)
    small = {"lr_feats": ((1, C, 1, 1), (1, C, 2, 2), (2, C, 4, 4)), "image": ((1, 3, SIZES[0], SIZES[0]), (1, 3, 40, 40), (2, 3, 56, 56))}
    plan = tmp_path / "two.plan"
    build_plan(exports[("upsampler", "matmul", "fp32")], plan, md, profiles=[small, profiles[0]])
    assert len(fake_trt.BUILDS[-1]["profiles"]) == 2
    engine = TensorRTEngine(plan)
    assert len(engine.profiles) == 2
    lr, image = torch.randn(1, C, 3, 3), torch.randn(1, 3, 42, 42)
    engine(lr, image)  # fits the small profile (index 0)
    assert not [c for c in fake_trt.CALLS if c[0] == "context.set_optimization_profile_async"]
    engine(torch.randn(1, C, 6, 6), torch.randn(1, 3, 100, 90))  # only the big one holds it
    switches = [c for c in fake_trt.CALLS if c[0] == "context.set_optimization_profile_async"]
    assert switches == [("context.set_optimization_profile_async", 1, 7)]  # on our stream handle


def test_bad_profile_is_refused(fake_trt, exports, tmp_path):
    md = read_metadata(exports[("upsampler", "matmul", "fp32")])
    bad = {"lr_feats": ((1, C, 4, 4), (1, C, 2, 2), (2, C, 8, 8)), "image": ((1, 3, 28, 28), (1, 3, 56, 56), (2, 3, 84, 84))}
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        build_plan(exports[("upsampler", "matmul", "fp32")], tmp_path / "bad.plan", md, profiles=[bad])
    with pytest.raises(ConfigError, match="lacks input"):
        build_plan(exports[("upsampler", "matmul", "fp32")], tmp_path / "bad.plan", md, profiles=[{"image": bad["image"]}])


def test_runtime_binds_by_name_and_matches_pytorch(fake_trt, exports, model, tmp_path):
    plan, _, _ = _build(fake_trt, exports, tmp_path, "fp32")
    engine = load_engine(plan)
    assert isinstance(engine, TensorRTEngine) and engine.inputs == ["lr_feats", "image"] and engine.outputs == ["hr_feats"]
    fake_trt.reset()
    result = check_parity(engine, TorchEngine(with_attention_backend(model, "sdpa")), PARITY_SHAPES)
    assert result, result.summary()
    shapes = [c for c in fake_trt.CALLS if c[0] == "context.set_input_shape"]
    assert {c[1] for c in shapes} == {"lr_feats", "image"} and len(shapes) == 2 * len(PARITY_SHAPES)
    assert ("context.set_input_shape", "image", (2, 3, 61, 87)) in shapes
    bound = {c[1] for c in fake_trt.CALLS if c[0] == "context.set_tensor_address"}
    assert bound == {"lr_feats", "image", "hr_feats"}
    runs = [c for c in fake_trt.CALLS if c[0] == "context.execute_async_v3"]
    assert runs == [("context.execute_async_v3", 7)] * len(PARITY_SHAPES)


def _parity(plan, model):
    return check_parity(TensorRTEngine(plan), TorchEngine(with_attention_backend(model, "sdpa")), PARITY_SHAPES)


def test_reduced_precision_plans_run_in_reduced_precision_and_pass_parity(fake_trt, exports, model, tmp_path):
    """The fake runs unpinned layers in fp16 / bf16 (float32 arithmetic inside a layer): the
    outputs move away from the fp32 plan's, bf16 (8-bit mantissa) further than fp16 (11-bit),
    and both still pass their precision's tolerance with the Fourier features pinned."""
    lr, image = torch.randn(1, C, 4, 5), torch.randn(1, 3, 57, 71)
    outs, results = {}, {}
    for precision in ("fp32", "fp16", "bf16"):
        plan, _, _ = _build(fake_trt, exports, tmp_path, precision, name=precision)
        outs[precision] = TensorRTEngine(plan)(lr, image)
        if precision != "fp32":
            results[precision] = _parity(plan, model)
    drift = {p: (outs[p] - outs["fp32"]).abs().max().item() for p in ("fp16", "bf16")}
    assert 1e-4 < drift["fp16"] < drift["bf16"], drift  # really rounded, and by each precision's step
    for precision, result in results.items():
        assert result and result.precision == precision, result.summary()
    assert results["fp16"].worst["max_abs"] < results["bf16"].worst["max_abs"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_broken_reduced_precision_path_fails_parity(fake_trt, exports, model, tmp_path, monkeypatch, precision):
    """A float32 region that stops at Sin/Cos (the coordinate products before them left in half
    precision) is a broken reduced-precision engine: its parity must fail at the table's tolerance."""
    import onnx

    import loftup.export.tensorrt as lt

    proto = onnx.load(str(exports[("upsampler", "matmul", "fp32")]))
    sin_cos = {n.name for n in proto.graph.node if n.op_type in ("Sin", "Cos")}
    monkeypatch.setattr(lt, "float32_nodes", lambda path: sin_cos)
    plan, _, build = _build(fake_trt, exports, tmp_path, precision)
    assert build["float32_layers"] == sin_cos
    result = _parity(plan, model)
    assert not result and not any(s.passed for s in result.shapes), result.summary()
    assert result.worst["max_abs"] > 2 * result.tolerance["max_abs"]  # well outside, not at the edge


def test_runtime_refuses_other_tensorrt_version(fake_trt, exports, tmp_path):
    plan, _, _ = _build(fake_trt, exports, tmp_path, "fp32")
    side = json.loads(sidecar_path(plan).read_text())
    side["runtime"]["tensorrt"] = "10.3.0"
    sidecar_path(plan).write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match=r"built with TensorRT 10\.3\.0 but TensorRT 10\.15\.1 is installed.*rebuild"):
        TensorRTEngine(plan)


def test_runtime_refuses_shapes_outside_profile(fake_trt, exports, tmp_path):
    plan, _, _ = _build(fake_trt, exports, tmp_path, "fp32")
    engine = TensorRTEngine(plan)
    with pytest.raises(InputError, match="outside this engine's range"):
        engine(torch.randn(1, C, 4, 4), torch.randn(1, 3, SIZES[2] + 2, 56))
    with pytest.raises(InputError, match="outside every optimization profile"):
        engine._run((torch.randn(1, C, 4, 4), torch.randn(1, 3, 20, 56)))


def test_corrupted_plan_or_sidecar_gives_clear_error(fake_trt, exports, tmp_path):
    plan, _, _ = _build(fake_trt, exports, tmp_path, "fp32")
    data = bytearray(plan.read_bytes())
    data[5:25] = b"x" * 20
    plan.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged or was replaced"):
        load_engine(plan)
    side = json.loads(sidecar_path(plan).read_text())
    del side["runtime"]["plan_sha256"]  # without the hash, TensorRT itself refuses it
    sidecar_path(plan).write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="cannot deserialize"):
        load_engine(plan)
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_engine(plan)
    sidecar_path(plan).unlink()
    with pytest.raises(CheckpointError, match="no metadata sidecar"):
        load_engine(plan)


def test_attention_op_needs_tensorrt_10_14(fake_trt, exports, tmp_path, monkeypatch):
    onnx_path = exports[("upsampler", "op", "fp32")]
    monkeypatch.setattr(fake_trt, "__version__", "10.8.0")
    with pytest.raises(ConfigError, match="Attention.*10.14"):
        build_plan(onnx_path, tmp_path / "a.plan", read_metadata(onnx_path))
    monkeypatch.setattr(fake_trt, "__version__", "10.14.1")
    build_plan(onnx_path, tmp_path / "a.plan", read_metadata(onnx_path))


def test_float32_region_stops_at_shapes(exports):
    """Only float nodes feeding Sin/Cos are pinned: not the channel norm whose *shape* the
    low-res positional features read, not the convs after the features."""
    import onnx

    proto = onnx.load(str(exports[("upsampler", "matmul", "fp32")]))
    names = float32_nodes(proto)
    ops = {n.name: n.op_type for n in proto.graph.node}
    pinned_ops = {ops[n] for n in names}
    assert {"Sin", "Cos", "ReduceMin", "ReduceMax"} <= pinned_ops
    assert not pinned_ops & {"Conv", "LayerNormalization", "MatMul", "Softmax", "Shape"}


def test_export_cli_trt_with_fake_tensorrt(fake_trt, tmp_path, capsys, checkpoint):
    from loftup.cli import main

    out = tmp_path / "tiny.plan"
    cache = tmp_path / "timing.cache"
    code = main(["export", "--checkpoint", str(checkpoint), "--scope", "upsampler", "--format", "trt", "--precision", "fp16",
                 "--min-size", "28", "--opt-size", "56", "--max-size", "84", "--max-batch", "2", "--out", str(out),
                 "--timing-cache", str(cache), "--workspace-mb", "256"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.is_file() and sidecar_path(out).is_file() and cache.is_file()
    side = json.loads(sidecar_path(out).read_text())
    assert side["parity"]["passed"] and side["precision"] == "fp16" and side["runtime"]["workspace_mb"] == 256
    assert not list(tmp_path.glob(".*"))  # no staging left behind
    assert {f.name for f in fake_trt.BUILDS[-1]["flags"]} == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}


def test_export_cli_refuses_an_fp16_plan_that_fails_parity(fake_trt, tmp_path, capsys, checkpoint, monkeypatch):
    """Nothing pinned to float32: the fp16 plan's Fourier features are noise, so export fails
    its parity check in one line and leaves no plan behind."""
    import loftup.export.tensorrt as lt
    from loftup.cli import main

    monkeypatch.setattr(lt, "float32_nodes", lambda path: set())
    out = tmp_path / "tiny.plan"
    code = main(["export", "--checkpoint", str(checkpoint), "--scope", "upsampler", "--format", "trt", "--precision", "fp16",
                 "--min-size", "28", "--opt-size", "56", "--max-size", "84", "--max-batch", "2", "--out", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "parity failed for tiny.plan" in errors[0], err
    assert not out.exists() and not sidecar_path(out).exists() and not list(tmp_path.glob(".*"))
