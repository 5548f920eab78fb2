"""Shared fixtures: a small LoftUp (C=32) with non-trivial BatchNorm statistics, a tiny random
DINOv2-style backbone, and ONNX exports made once per session (exports take ~10 s each)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # fake_tensorrt, export_helpers

from export_helpers import MAX_BATCH, SIZES, make_backbone, make_model  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def model():
    return make_model()


@pytest.fixture(scope="session")
def backbone():
    return make_backbone()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, model):
    from loftup.model import save_checkpoint

    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def exports(tmp_path_factory, model, backbone, checkpoint):
    """Lazily exported ONNX files: exports[(scope, encoding, precision)] -> Path."""
    from loftup.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    cache: dict = {}

    class Exports:
        def __getitem__(self, key):
            if key not in cache:
                scope, encoding, precision = key
                path = folder / f"{scope}_{encoding}_{precision}.onnx"
                export_onnx(model, path, backbone=backbone if scope == "pipeline" else None, scope=scope, precision=precision,
                            opset=23 if encoding == "op" else 20, attention=encoding, sizes=SIZES, max_batch=MAX_BATCH,
                            source=checkpoint)
                cache[key] = path
            return cache[key]

    return Exports()


@pytest.fixture()
def fake_trt(monkeypatch):
    """The fake `tensorrt` module installed, with a pretend GPU and a CPU 'stream'."""
    import fake_tensorrt

    import loftup.export.tensorrt as lt

    fake_tensorrt.reset()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr(lt, "gpu_info", lambda: {"name": "Fake GPU", "compute_capability": "8.9", "cuda": "12.4"})
    monkeypatch.setattr(lt, "cuda_device", lambda: (torch.device("cpu"), lt._Stream(handle=7)))
    return fake_tensorrt
