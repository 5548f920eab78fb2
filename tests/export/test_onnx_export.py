"""ONNX export -> ONNX Runtime: parity with PyTorch on unseen shapes, both scopes and both
attention encodings, fp16, metadata round trip, TensorRT op coverage, bad files and inputs."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from export_helpers import C, MAX_BATCH, PARITY_SHAPES, SIZES, make_backbone
from loftup.errors import CheckpointError, ConfigError, InputError
from loftup.export.engine import TorchEngine, load_engine, with_attention_backend
from loftup.export.onnx import OnnxEngine, onnx_op_types, read_metadata, traceable_backbone
from loftup.export.parity import TOLERANCES, check_parity
from loftup.export.tensorrt import TENSORRT10_OPS, unsupported_ops

pytestmark = pytest.mark.export


def test_traceable_coord_grid_matches_linspace():
    from loftup.model.layers import traceable_coord_grid

    for n in list(range(1, 300)) + [447, 448, 895, 896, 2048]:
        a, b = torch.linspace(-1, 1, n), traceable_coord_grid(n)
        assert torch.equal(a[[0, -1]], b[[0, -1]])
        assert (a - b).abs().max() <= torch.finfo(torch.float32).eps  # within one ulp of 1.0


@pytest.mark.parametrize("registers", [0, 4])
def test_traceable_position_embedding_equals_the_backbones(registers):
    """The matrix form of the position-embedding resize gives the backbone's own numbers,
    including the square no-resize case and the antialiased register variant."""
    bb = make_backbone(registers)
    traced = traceable_backbone(bb, 140)
    inner, tinner = bb.model, traced.model
    M = inner.cfg.grid_size
    for h0, w0 in [(1, 1), (2, 7), (M, M), (M, 3), (10, 10), (4, 9)]:
        a = inner.pos_embed_for(h0 * 14, w0 * 14)
        b = tinner.pos_embed_for(h0 * 14, w0 * 14)
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-6, (h0, w0)


def test_traceable_position_embedding_clip():
    from loftup.backbones import CLIP_TINY, CLIPVisionTower

    tower = CLIPVisionTower(CLIP_TINY)
    p, M = CLIP_TINY.patch_size, CLIP_TINY.grid_size
    traced = traceable_backbone(tower, (M + 2) * p)
    for h0, w0 in [(1, 2), (M, M), (3, 8), (8, 8)]:
        a, b = tower.pos_embed_for(h0 * p, w0 * p), traced.pos_embed_for(h0 * p, w0 * p)
        assert a.shape == b.shape and (a - b).abs().max() < 1e-6


def _reference(model, backbone, scope):
    """PyTorch fp32 (BatchNorm unfolded). With a backbone it also makes the upsampler scope's
    low-res features, so both scopes see real (random-ViT) features of the photos."""
    return TorchEngine(with_attention_backend(model, "sdpa"), backbone)


@pytest.mark.parametrize("encoding", ["matmul", "op"])
@pytest.mark.parametrize("scope", ["upsampler", "pipeline"])
def test_onnx_runtime_parity_on_unseen_shapes(exports, model, backbone, scope, encoding):
    path = exports[(scope, encoding, "fp32")]
    onnx.checker.check_model(str(path), full_check=True)
    ops = onnx_op_types(path)
    if encoding == "op":
        assert ops.get("Attention", 0) >= 2 and "Softmax" not in ops
    else:
        assert "Attention" not in ops and ops["Softmax"] >= 2 and ops["MatMul"] >= 4
    engine = load_engine(path)
    assert isinstance(engine, OnnxEngine) and engine.scope == scope
    graph = onnx.load(str(path)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["image"] == ["batch", 3, "height", "width"]
    if scope == "upsampler":
        assert dims["lr_feats"] == ["batch", C, "lr_height", "lr_width"]
    result = check_parity(engine, _reference(model, backbone, scope), PARITY_SHAPES)
    print(result.summary())
    assert result, result.summary()
    assert [(s.batch, s.height, s.width) for s in result.shapes] == PARITY_SHAPES
    worst = result.worst
    assert worst["max_abs"] < 5e-3 and worst["min_cos"] > 0.99999


def test_fp16_weights_export_has_looser_parity(exports, model, backbone):
    path = exports[("upsampler", "matmul", "fp16")]
    proto = onnx.load(str(path))
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    weights = [i for n in proto.graph.node if n.op_type in ("Conv", "MatMul") for i in n.input if i in inits]
    assert len(weights) >= 11 and all(inits[w] == onnx.TensorProto.FLOAT16 for w in weights)  # convs + linears in half
    assert onnx.TensorProto.FLOAT in inits.values()  # the Fourier featurizers' phases/frequencies stay float32
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O
    engine = load_engine(path)
    assert engine.metadata.precision == "fp16"
    result = check_parity(engine, _reference(model, None, "upsampler"), PARITY_SHAPES)
    print(result.summary())
    assert result and result.precision == "fp16"
    assert result.tolerance["max_abs"] == TOLERANCES["fp16"].max_abs > TOLERANCES["fp32"].max_abs
    # really half precision: clearly worse than fp32, still close
    assert 1e-3 < result.worst["max_abs"] < 0.1 and result.worst["min_cos"] > 0.999
    # the same parity check with fp32 tolerances would be stricter
    assert not check_parity(engine, _reference(model, None, "upsampler"), PARITY_SHAPES[:1], precision="fp32",
                            tolerance=type(TOLERANCES["fp32"])(max_abs=1e-3, mean_cos=0.99999, min_cos=0.99999))


@pytest.mark.parametrize("scope", ["upsampler", "pipeline"])
def test_tensorrt_targeted_graph_uses_only_parser_ops(exports, scope):
    """opset 20 (what older TensorRT fuses): every op is on the TensorRT 10 parser list."""
    path = exports[(scope, "matmul", "fp32")]
    ops = set(onnx_op_types(path))
    assert ops <= TENSORRT10_OPS, sorted(ops - TENSORRT10_OPS)
    assert unsupported_ops(path, "10.8.0") == []
    op_path = exports[(scope, "op", "fp32")]
    assert unsupported_ops(op_path, "10.8.0") == ["Attention"]  # needs TensorRT >= 10.14
    assert unsupported_ops(op_path, "10.14.1") == []


def test_metadata_round_trips(exports, checkpoint, backbone):
    from loftup import __version__
    from loftup.io import file_sha256

    md = read_metadata(exports[("pipeline", "op", "fp32")])
    assert (md.format, md.scope, md.feat_dim, md.precision, md.opset, md.attention) == ("onnx", "pipeline", C, "fp32", 23, "op")
    assert md.backbone == "dinov2_tiny" and md.patch_size == 14
    assert md.mean == pytest.approx(list(backbone.mean)) and md.std == pytest.approx(list(backbone.std))
    assert md.input_shapes["image"] == {"min": [1, 3, SIZES[0], SIZES[0]], "opt": [1, 3, SIZES[1], SIZES[1]], "max": [MAX_BATCH, 3, SIZES[2], SIZES[2]]}
    assert md.source_checkpoint == checkpoint.name and md.source_sha256 == file_sha256(checkpoint)
    assert md.loftup_version == __version__ and md.model_config["feat_dim"] == C
    assert "normalised" in md.input_values["image"]
    up = read_metadata(exports[("upsampler", "matmul", "fp32")])
    assert up.scope == "upsampler" and up.input_shapes["lr_feats"]["max"] == [MAX_BATCH, C, SIZES[2] // 14, SIZES[2] // 14]
    assert "before LoftUp's channel norm" in up.input_values["lr_feats"]
    # flat keys for viewers such as Netron
    props = {p.key: p.value for p in onnx.load(str(exports[("pipeline", "op", "fp32")]), load_external_data=False).metadata_props}
    assert props["loftup.backbone"] == "dinov2_tiny" and json.loads(props["loftup"])["opset"] == 23


def test_engine_checks_its_inputs(exports):
    engine = load_engine(exports[("upsampler", "matmul", "fp32")])
    image = torch.zeros(1, 3, 56, 56)
    with pytest.raises(InputError, match="engine\\(lr_feats, image\\)"):
        engine(image)
    with pytest.raises(InputError, match="channels"):
        engine(torch.zeros(1, C + 1, 4, 4), image)
    with pytest.raises(InputError, match="outside this engine's range"):
        engine(torch.zeros(1, C, 4, 4), torch.zeros(1, 3, 56, SIZES[2] + 1))
    with pytest.raises(InputError, match="batch"):
        engine(torch.zeros(MAX_BATCH + 1, C, 4, 4), torch.zeros(MAX_BATCH + 1, 3, 56, 56))


def test_corrupted_or_foreign_onnx_gives_clear_error(exports, tmp_path):
    good = exports[("upsampler", "matmul", "fp32")].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 3])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file" * 100)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match="cannot load ONNX engine .*export it again"):
            load_engine(path)
        with pytest.raises(CheckpointError, match="cannot read ONNX file"):
            read_metadata(path)
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load_from_string(good)
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(CheckpointError, match="without loftup metadata"):
        load_engine(foreign)
    with pytest.raises(ConfigError, match="suffix"):
        load_engine(tmp_path / "model.weird")


def test_torch_checkpoint_is_an_engine_too(checkpoint, backbone, exports):
    """load_engine on our checkpoint gives the same call and metadata shape as an ONNX file."""
    engine = load_engine(checkpoint, backbone=backbone)
    onnx_engine = load_engine(exports[("pipeline", "matmul", "fp32")])
    image = torch.randn(1, 3, 42, 70)
    a, b = engine(image), onnx_engine(image)
    assert a.shape == b.shape == (1, C, 42, 70)
    assert (a - b).abs().max() < 5e-3
    assert engine.metadata.feat_dim == onnx_engine.metadata.feat_dim == C
    lr = torch.randn(1, C, 3, 5)
    assert engine(lr, image).shape == (1, C, 42, 70)  # both forms with a backbone
    up_only = load_engine(checkpoint)
    with pytest.raises(InputError, match="no backbone"):
        up_only(image)


def test_wrong_backbone_for_checkpoint_is_refused(model, tmp_path):
    from loftup.export.onnx import export_onnx

    other = make_backbone()
    other.embed_dim = C * 2
    with pytest.raises(CheckpointError, match="upsamples 32-channel features"):
        export_onnx(model, tmp_path / "x.onnx", backbone=other, scope="pipeline", sizes=SIZES)
