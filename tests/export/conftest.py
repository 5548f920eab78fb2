"""Shared fixtures: a small LoftUp (C=32) with non-trivial BatchNorm statistics, a tiny random
DINOv2-style backbone, and ONNX exports made once per run (exports take 10-40 s each)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # fake_tensorrt, export_helpers

from export_helpers import MAX_BATCH, SIZES, make_backbone, make_model  # noqa: E402

from run_once import once_per_run  # noqa: E402


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
    """The tiny model's checkpoint, one file for the whole run (shared by the workers' exports)."""
    from loftup.model import save_checkpoint

    def make(folder):
        return str(save_checkpoint(model, folder / "tiny.safetensors"))

    return Path(once_per_run(tmp_path_factory, "export-checkpoint", make)[0])


@pytest.fixture(scope="session")
def exports(tmp_path_factory, model, backbone, checkpoint):
    """Lazily exported ONNX files, each made once per run across the workers (10-40 s each):
    exports[(scope, encoding, precision)] -> Path. Read-only: copy one before changing it."""
    from loftup.export.onnx import export_onnx

    class Exports:
        def __getitem__(self, key):
            scope, encoding, precision = key

            def make(folder):
                path = folder / f"{scope}_{encoding}_{precision}.onnx"
                export_onnx(model, path, backbone=backbone if scope == "pipeline" else None, scope=scope, precision=precision,
                            opset=23 if encoding == "op" else 20, attention=encoding, sizes=SIZES, max_batch=MAX_BATCH,
                            source=checkpoint)
                return str(path)

            return Path(once_per_run(tmp_path_factory, f"export-{scope}-{encoding}-{precision}", make)[0])

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
