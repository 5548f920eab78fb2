"""Export and runtimes: ONNX and TensorRT engines with built-in parity, behind one Engine interface.

    from loftup.export import load_engine, export_engine, ExportOptions
    engine = load_engine("loftup.onnx")     # .onnx, .plan or a PyTorch checkpoint
    hr = engine(images)                     # or engine(lr_feats, image) for the upsampler scope

Submodules: formats (the table of formats and their hooks), metadata (EngineMetadata),
engine (Engine, TorchEngine, load_engine), exporter (export_engine / export_model), onnx
(export + ONNX Runtime engine), tensorrt (plan builder + runtime), parity, commands (the
`loftup export` verb). ParityError lives in loftup.errors. The CLI imports this package on every start, so nothing heavy is imported
here: names resolve lazily on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Engine": "engine",
    "EngineMetadata": "metadata",
    "TorchEngine": "engine",
    "load_engine": "engine",
    "reference_engine": "engine",
    "OnnxEngine": "onnx",
    "export_onnx": "onnx",
    "TensorRTEngine": "tensorrt",
    "build_plan": "tensorrt",
    "ParityResult": "parity",
    "check_parity": "parity",
    "TOLERANCES": "parity",
    "ExportOptions": "exporter",
    "ExportReport": "exporter",
    "export_engine": "exporter",
    "export_model": "exporter",
    "FORMATS": "formats",
    "get_format": "formats",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
