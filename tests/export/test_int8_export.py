"""INT8 ONNX engines (issue 26): static quantization of the looped graph's bodies, calibrated on photos.

One tiny export (C = 32, two calibration photos written to a folder) serves the module.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from export_helpers import PARITY_SHAPES, SIZES

from loftup.errors import ConfigError, InputError
from loftup.export.exporter import ExportOptions, export_engine, export_model
from loftup.export.formats import FORMATS, check_export_options, get_format
from loftup.export.onnx import OnnxEngine, read_metadata
from loftup.export.parity import compare, photo_batch, photo_features, tolerance_for
from loftup.export.quantize import calibration_images


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    from loftup.io.samples import load_sample

    folder = tmp_path_factory.mktemp("calib")
    for name in ("coffee", "rocket", "chelsea"):  # (with two photos this tiny random model misses the int8 tolerance)
        load_sample(name).resize((64, 64)).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def int8(tmp_path_factory, model, calibration_dir):
    out = tmp_path_factory.mktemp("int8") / "tiny_int8.onnx"
    report = export_model(model, None, out, fmt="onnx", precision="int8", sizes=SIZES, max_batch=2, patch_size=14,
                          calibration=calibration_dir, parity_shapes=[PARITY_SHAPES[0]])
    return report


def _bodies(path):
    graph = onnx.load(str(path)).graph
    return graph, [a.g for n in graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body"]


def test_int8_export_metadata_and_parity(int8, calibration_dir):
    md = read_metadata(int8.path)
    assert md.precision == "int8" and md.format == "onnx"
    q = md.runtime["quantization"]
    assert q["photos"] == ["chelsea.png", "coffee.png", "rocket.png"] and q["calibration"] == str(calibration_dir)
    assert q["format"] == "QDQ" and q["weights"] == "int8 per channel" and q["calibration_inputs"] == 3
    assert int8.parity and md.parity["passed"]
    row = FORMATS["onnx"].tolerance("int8")
    assert md.parity["tolerance"] == {"max_abs": row.max_abs, "mean_cos": row.mean_cos, "min_cos": row.min_cos}


def test_int8_graph_quantizes_convs_and_weight_matmuls_only(int8):
    graph, bodies = _bodies(int8.path)
    assert len(bodies) == 2  # row bands, query blocks
    outer_weights = {i.name for i in graph.initializer}
    counts = []
    for body in bodies:
        producer = {o: n.op_type for n in body.node for o in n.output}
        int8_weights = {i.name for i in body.initializer if i.data_type == onnx.TensorProto.INT8}
        quantized = 0
        for node in body.node:
            if node.op_type == "QuantizeLinear":  # a quantized linear writes float: no requantize after it
                assert producer.get(node.input[0]) != "Gemm", node.name
            if node.op_type not in ("Conv", "MatMul", "Gemm"):
                continue
            sources = [producer.get(name, "outer") for name in node.input[:2]]
            weight = node.op_type != "MatMul" or sources[1] == "DequantizeLinear" or node.input[1] in outer_weights
            if weight:  # convs and projections / FFN / head: int8 weights and uint8 activations
                assert sources == ["DequantizeLinear", "DequantizeLinear"], (node.name, sources)
                quantized += 1
            else:  # the attention: q.k and p.v stay float
                assert "DequantizeLinear" not in sources, (node.name, sources)
        assert int8_weights  # the weights live in the body as int8
        counts.append(quantized)
    assert counts == [2, 2 * 4 + 1]  # two convs; per block q, out, FFN x 2, then the head
    gemms = sum(n.op_type == "Gemm" for n in bodies[1].node)
    assert gemms == 2 * 4 + 1  # each of them a Gemm with its bias (linears_as_gemm)
    assert not any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)
    main_ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" not in main_ops  # the main graph (kv projection, min-max) stays float


def test_int8_engine_is_close_to_fp32(int8, exports):
    fp32 = OnnxEngine(exports[("upsampler", "matmul", "fp32")])
    engine = OnnxEngine(int8.path)
    batch, H, W = PARITY_SHAPES[1]
    image, _ = photo_batch(batch, H, W, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    lr = photo_features(image, 32, 14)
    err = compare(engine(lr, image), fp32(lr, image))
    assert err["mean_cos"] > 0.99 and err["max_abs"] > 1e-4, err  # close, and really quantized


def test_format_row_owns_the_int8_tolerance():
    row = get_format("onnx")
    assert "int8" in row.precisions and row.quantize
    assert row.tolerance("fp32") is None and row.tolerance("int8") is not None
    tol = tolerance_for("int8", "onnx")
    assert (tol.max_abs, tol.mean_cos, tol.min_cos) == (row.tolerance("int8").max_abs, row.tolerance("int8").mean_cos,
                                                        row.tolerance("int8").min_cos)
    assert tolerance_for("fp32", "onnx") == tolerance_for("fp32")
    with pytest.raises(ConfigError, match="int8"):
        check_export_options(FORMATS["trt"], "int8", "upsampler", SIZES, 1)
    with pytest.raises(ConfigError, match="--calibration"):
        check_export_options(FORMATS["onnx"], "fp32", "upsampler", SIZES, 1, calibration="photos/")


def test_calibration_folder_errors_come_before_any_work(tmp_path, monkeypatch):
    import loftup.export.exporter as ex

    monkeypatch.setattr(ex, "load_model_and_backbone", lambda opts: pytest.fail("loaded a model before checking --calibration"))
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, match in ((empty, "no readable images"), (tmp_path / "missing", "not a folder")):
        with pytest.raises(InputError, match=match):
            export_engine(ExportOptions(random_init=True, feat_dim=32, precision="int8", calibration=folder, out=tmp_path / "m.onnx"))
    assert not list(tmp_path.glob("*.onnx"))


def test_bundled_calibration_photos():
    images = calibration_images(None)
    assert len(images) >= 4 and all(img.mode == "RGB" for _, img in images)
    assert len(calibration_images(None, limit=2)) == 2


def test_a_trace_is_reused_only_for_a_quantized_precision(tmp_path, model, exports):
    """export_model(traced=...) copies an earlier fp32 trace (loftup bench's int8 row); it refuses
    a trace for a precision the trace is not (ONNX fp32 is traced itself) and a trace of another
    export, before writing anything."""
    fp32 = exports[("upsampler", "matmul", "fp32")]
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="serves the quantized precisions"):
        export_model(model, None, out, fmt="onnx", precision="fp32", sizes=SIZES, max_batch=2, patch_size=14, traced=fp32)
    with pytest.raises(ValueError, match="not an fp32 ONNX trace of this export"):
        export_model(model, None, out, fmt="onnx", precision="int8", sizes=SIZES, max_batch=2, patch_size=14, opset=23,
                     traced=fp32)
    assert list(tmp_path.iterdir()) == []
