"""ONNX pipeline export + parity for a tiny backbone and a LoftUp of its width (used by the SigLIP
and RADIO tests; a uniquely named module, since several test folders have a conftest.py)."""

from __future__ import annotations

import torch

# shapes the tracer never saw: odd sizes (the pipeline resizes them to multiples of 16 inside the
# graph), non-square, batch 2
PARITY_SHAPES = [(1, 57, 57), (2, 61, 87), (1, 111, 35)]
SIZES = (32, 64, 112)  # min / opt / max image side


def export_pipeline(backbone, folder):
    """Export backbone + a random LoftUp (C = backbone.embed_dim) as one ONNX pipeline engine;
    the exporter checks parity against the PyTorch reference on PARITY_SHAPES."""
    from loftup.export.exporter import export_model
    from loftup.model import LoftUp, LoftUpConfig

    torch.manual_seed(0)
    model = LoftUp(LoftUpConfig(feat_dim=backbone.embed_dim)).eval()
    return export_model(
        model, backbone, folder / f"{backbone.name}_pipeline.onnx", fmt="onnx", scope="pipeline", opset=20,
        attention="matmul", sizes=SIZES, max_batch=2, parity_shapes=PARITY_SHAPES,
    )


def check_report(report) -> None:
    """The engine passed parity on every shape and kept dynamic batch / height / width."""
    import onnx

    result = report.parity
    print(result.summary())
    assert result, result.summary()
    assert [(s.batch, s.height, s.width) for s in result.shapes] == PARITY_SHAPES
    assert result.worst["max_abs"] < 5e-3 and result.worst["min_cos"] > 0.99999
    graph = onnx.load(str(report.path), load_external_data=False).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
