"""Our RADIO v2.5 against the official NVlabs/RADIO fixtures (FACTS_BACKBONES2 s4), its checkpoint
layouts, size rule and errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from loftup.backbones import RADIO_V25_B, RADIO_V25_L, RadioModel, build_backbone, create_backbone, get_spec
from loftup.backbones.radio import radio_state_dict
from loftup.errors import CheckpointError, ConfigError, InputError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "backbones2"
TINY = dict(embed_dim=64, depth=2, num_heads=2, max_img_size=192)
ATOL = 2e-5
MAX_ERR: dict[str, float] = {}
TEACHERS = [  # radio_v2.5-b's teachers as its args list them (the fields hubconf reads)
    {"name": "clip", "type": "open_clip"},
    {"name": "siglip", "type": "open_clip"},
    {"name": "dino_v2", "type": "dino_v2"},
    {"name": "sam", "type": "sam", "use_summary": False},
]


@pytest.fixture(scope="module")
def io():
    return np.load(FIXTURES / "radio_tiny_io.npz")


@pytest.fixture(scope="module")
def tiny():
    return build_backbone("radio", FIXTURES / "radio_tiny.safetensors", name="radio_tiny", **TINY)


def _err(key: str, a: torch.Tensor, b: np.ndarray) -> float:
    assert tuple(a.shape) == b.shape, key
    err = float((a - torch.from_numpy(b)).abs().max())
    MAX_ERR[key] = max(err, MAX_ERR.get(key, 0.0))
    return err


def released_checkpoint(path: Path, mean=(0.48145466, 0.4578275, 0.40821073), **args) -> Path:
    """The tiny fixture in the released `.pth.tar` layout: base_model.*, input_conditioner.*, a
    teacher head, and an argparse.Namespace `args` (as NVlabs/RADIO's training script saves it)."""
    sd = load_file(FIXTURES / "radio_tiny.safetensors")
    state = {"base_model." + k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    state["input_conditioner.norm_mean"] = torch.tensor(mean).view(3, 1, 1)
    state["input_conditioner.norm_std"] = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    state["_heads.0.weight"] = torch.zeros(8, 64)  # adaptor weights: ignored
    namespace = argparse.Namespace(
        model="vit_base_patch16_224", model_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 2}, cpe_max_size=192,
        teachers=TEACHERS, cls_token_per_teacher=True, register_multiple=8, model_norm=False, spectral_reparam=False,
    )
    vars(namespace).update(args)
    torch.save({"state_dict": state, "args": namespace, "epoch": 3}, path)
    return path


@pytest.mark.parametrize("case", range(4))
def test_matches_official_fixture(tiny, io, case):
    img = torch.from_numpy(io[f"case{case}_img"])
    h, w = img.shape[-2] // 16, img.shape[-1] // 16
    with torch.no_grad():
        out = tiny.model.forward_features(img)
        spatial = tiny(img)
        pos = tiny.model.position_embedding(h, w)
    assert torch.equal(spatial, out["spatial"]) and spatial.shape == (img.shape[0], 64, h, w)
    assert _err("spatial", spatial, io[f"case{case}_spatial"]) <= ATOL
    assert _err("summary", out["summary"], io[f"case{case}_summary"]) <= ATOL
    assert _err("pos_embed_used", pos, io[f"case{case}_pos_embed_used"]) <= ATOL
    if f"case{case}_tokens" in io:
        assert _err("tokens (8 prefix + patches)", out["tokens"], io[f"case{case}_tokens"]) <= ATOL
    if case == 0:  # the native 12x12 grid: the position embedding is used as stored
        assert torch.equal(pos, tiny.model.model.patch_generator.pos_embed)


def test_batch_split_and_train_mode_agree(tiny, io):
    img = torch.from_numpy(io["case1_img"])  # batch of 2
    with torch.no_grad():
        both = tiny(img)
        tiny.model.train()  # no random CPE viewport or position dropout here: eval numbers always
        one = tiny.model(img[1:])
        tiny.model.eval()
    assert torch.allclose(both[1:], one, atol=1e-6)


def test_released_pth_tar_reads_weights_only_with_its_args(tmp_path, io):
    path = released_checkpoint(tmp_path / "radio-tiny_half.pth.tar", mean=(0.4, 0.5, 0.6))
    bb = build_backbone("radio", path)  # no config: it comes from args
    cfg = bb.model.cfg
    assert (cfg.embed_dim, cfg.depth, cfg.max_img_size, cfg.num_cls_tokens, cfg.num_registers) == (64, 2, 192, 4, 4)
    assert cfg.summary_idxs == (0, 1, 2)  # the SAM teacher has use_summary False
    assert bb.mean == (0.485, 0.456, 0.406)  # LoftUp's default
    native = build_backbone("radio", path, normalization="native")
    assert native.mean == pytest.approx((0.4, 0.5, 0.6)) and native.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    img = torch.from_numpy(io["case2_img"])
    with torch.no_grad():
        assert _err("spatial", bb(img), io["case2_spatial"]) <= ATOL
    half = tmp_path / "half.pth.tar"  # the released files are float16
    with torch.serialization.safe_globals([argparse.Namespace]):
        chk = torch.load(path, weights_only=True)
    chk["state_dict"] = {k: v.half() for k, v in chk["state_dict"].items()}
    torch.save(chk, half)
    assert build_backbone("radio", half).model.model.blocks[0].attn.qkv.weight.dtype == torch.float32


def test_full_size_key_layouts():
    ref = next(iter(json.loads((FIXTURES / "radio_v2.5-b_keys.json").read_text()).values()))
    with torch.device("meta"):
        sd = RadioModel(RADIO_V25_B).state_dict()
        large = RadioModel(RADIO_V25_L).state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == list(ref["keys"].items())
    assert sum(v.numel() for k, v in sd.items() if k != "summary_idxs") == ref["params"] == 98_233_344
    # the released checkpoint's keys map onto ours (summary_idxs comes from args)
    released = {k: torch.empty(v, device="meta") for k, v in ref["checkpoint_keys"].items()}
    released.update({k: torch.ones(3, 1, 1) for k in ref["keys_before_make_preprocessor_external_extra"]})
    mapped = radio_state_dict(released)
    assert sorted(mapped.state_dict) == sorted(k for k in sd if k != "summary_idxs")
    assert all(mapped.state_dict[k].shape == sd[k].shape for k in mapped.state_dict)
    assert mapped.mean == (1.0, 1.0, 1.0)
    assert large["model.patch_generator.pos_embed"].shape == (1, 128 * 128, 1024)
    assert large["model.blocks.23.mlp.fc1.weight"].shape == (4096, 1024) and "model.blocks.24.norm1.weight" not in large
    assert large["model.patch_generator.embedder.weight"].shape == (1024, 768)
    for name, cfg, dim in (("radio_v2.5_b", RADIO_V25_B, 768), ("radio_v2.5_l", RADIO_V25_L, 1024)):
        spec = get_spec(name)
        assert (spec.arch, spec.config, spec.embed_dim, spec.patch_size) == ("radio", cfg, dim, 16)
        assert spec.mean == (0.485, 0.456, 0.406) and spec.url.endswith("_half.pth.tar?download=true")
        assert cfg.summary_dim == 3 * dim and cfg.num_prefix_tokens == 8 and not cfg.final_norm


def test_size_rule(tiny):
    with torch.no_grad():
        assert tiny(torch.zeros(1, 3, 16, 336)).shape == (1, 64, 1, 21)  # any multiple of 16, past the grid too
    with pytest.raises(InputError, match="multiples of 16, got 100x130; the nearest valid size is 96x128"):
        tiny(torch.zeros(1, 3, 100, 130))


def test_clear_errors(tmp_path):
    siglip = str(FIXTURES / "siglip_tiny.safetensors")
    with pytest.raises(CheckpointError, match=r"is a SigLIP .* checkpoint but backbone 'radio_v2.5_b' is RADIO; use siglip_vitb16"):
        create_backbone("radio_v2.5_b", weights=siglip)
    good = released_checkpoint(tmp_path / "radio.pth.tar").read_bytes()
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cut.pth.tar.*(damaged|truncated)"):
        create_backbone("radio_v2.5_b", weights=str(cut))
    # a tiny (64-wide) checkpoint given to the full-size preset: its args say so before any build
    with pytest.raises(CheckpointError, match=r"does not fit backbone 'radio_v2.5_b': embed_dim 768 \(file: 64\)"):
        create_backbone("radio_v2.5_b", weights=str(tmp_path / "radio.pth.tar"))
    # a RADIO file given to a SigLIP backbone is recognised too
    with pytest.raises(CheckpointError, match="is a RADIO checkpoint but backbone 'siglip_vitb16' is SigLIP"):
        create_backbone("siglip_vitb16", weights=str(tmp_path / "radio.pth.tar"))
    # args holding anything but plain data and the Namespace are refused, not unpickled
    evil = released_checkpoint(tmp_path / "evil.pth.tar", logdir=Path("/tmp"))
    with pytest.raises(CheckpointError, match="Python objects"):
        build_backbone("radio", evil)
    with pytest.raises(CheckpointError, match="eradio"):
        build_backbone("radio", released_checkpoint(tmp_path / "e.pth.tar", model="eradio"))
    with pytest.raises(ConfigError, match="non-CPE"):
        build_backbone("radio", embed_dim=32, depth=1, num_heads=2, max_img_size=224)
    with pytest.raises(ConfigError, match="summary_idxs"):
        build_backbone("radio", embed_dim=32, depth=1, num_heads=2, summary_idxs=[0, 5])


def test_feature_normaliser_checkpoints_are_refused():
    sd = load_file(FIXTURES / "radio_tiny.safetensors")
    sd["_feature_normalizer.mean"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match="PHI-S feature normaliser"):
        build_backbone("radio", sd, **TINY)


@pytest.mark.export
def test_onnx_pipeline_export_with_parity(tmp_path):
    """RADIO + LoftUp as one ONNX graph with dynamic sizes: the CPE grid (5x5 here) is both
    down- and upsampled across the exported size range, images are resized to multiples of 16
    inside the graph, and the engine matches PyTorch."""
    from wave2_export import check_report, export_pipeline

    bb = build_backbone("radio", name="radio_tiny", embed_dim=32, depth=1, num_heads=2, max_img_size=80, seed=1)
    check_report(export_pipeline(bb, tmp_path))


def teardown_module():
    print("\nmax abs error vs the official RADIO fixtures:", {k: f"{v:.2e}" for k, v in sorted(MAX_ERR.items())})
