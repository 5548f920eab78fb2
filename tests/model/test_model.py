"""Model behaviour: tiling, BatchNorm folding, min-max modes, ablation knobs, backends, input errors."""

import pytest
import torch
from safetensors.torch import load_file

from loftup.errors import ConfigError, InputError
from loftup.model import LoftUp, LoftUpConfig, fold_batchnorm


@pytest.fixture(scope="module")
def official_model(official_dir):
    model = LoftUp(LoftUpConfig(feat_dim=32, attn_backend="sdpa"))
    model.load_state_dict(load_file(official_dir / "loftup_tiny.safetensors"))
    return model.eval()


def inputs(B=2, C=32, h=5, w=7, H=45, W=61, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, h, w, generator=g), torch.randn(B, 3, H, W, generator=g)


def maxdiff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("tile_size", [8, 16, 23])
def test_tiled_equals_untiled(official_model, tile_size):
    lr, img = inputs(H=50, W=61)
    model = LoftUp(official_model.cfg.replace(tile_size=tile_size))
    model.load_state_dict(official_model.state_dict())
    model.eval()
    with torch.no_grad():
        full = model(lr, img, tile=False)
        tiled = model(lr, img, tile=True)
    assert maxdiff(full, tiled) < 1e-5


def test_tiling_chosen_automatically_from_the_memory_budget(official_model):
    """Budget arithmetic: tests/model/test_memory_budget.py."""
    model = LoftUp(official_model.cfg.replace(tile_size=16)).eval()
    model.upsampler.memory_budget = 2**60
    assert not model.upsampler.use_tiling(1000, 1000)
    assert LoftUp(model.cfg.replace(tiling="always")).eval().upsampler.use_tiling(8, 8)
    model.train()
    assert not model.upsampler.use_tiling(1000, 1000)  # BatchNorm batch stats: never tile in training
    with pytest.raises(ConfigError, match="eval mode"):
        model(*inputs(B=1, H=20, W=20), tile=True)


def test_kernel1_tiles_without_halo():
    torch.manual_seed(0)
    model = LoftUp(LoftUpConfig(feat_dim=16, image_conv_kernel=1, tile_size=9)).eval()
    lr, img = inputs(C=16, H=30, W=20)
    assert model.upsampler.halo == 0
    with torch.no_grad():
        assert maxdiff(model(lr, img, tile=False), model(lr, img, tile=True)) < 1e-5


def test_batchnorm_folding_is_exact(official_model):
    lr, img = inputs()
    folded = fold_batchnorm(official_model)
    assert type(folded) is LoftUp
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in official_model.modules())  # original untouched
    with torch.no_grad():
        assert maxdiff(official_model(lr, img), folded(lr, img)) < 1e-5


def test_per_image_equals_batch_wide_on_single_image(official_model):
    lr, img = inputs(B=1)
    per_image = LoftUp(official_model.cfg.replace(minmax="per_image")).eval()
    per_image.load_state_dict(official_model.state_dict())
    batch = LoftUp(official_model.cfg.replace(minmax="batch")).eval()
    batch.load_state_dict(official_model.state_dict())
    with torch.no_grad():
        assert maxdiff(per_image(lr, img), batch(lr, img)) < 1e-5


def test_per_image_outputs_do_not_depend_on_batch_mates(official_model):
    lr, img = inputs(B=2)
    with torch.no_grad():
        both = official_model(lr, img)
        alone = official_model(lr[:1], img[:1])
    assert maxdiff(both[:1], alone) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_backends_agree(official_model, backend):
    lr, img = inputs()
    model = LoftUp(official_model.cfg.replace(attn_backend=backend)).eval()
    model.load_state_dict(official_model.state_dict())
    with torch.no_grad():
        assert maxdiff(model(lr, img), official_model(lr, img)) < 1e-5
    assert model.attention_backend.resolve(torch.device("cpu")) == backend


@pytest.mark.parametrize(
    "knobs",
    [
        dict(lr_pe="none"),
        dict(lr_pe="learnable", lr_pe_size=6),
        dict(lr_pe="rope"),
        dict(image_conv_kernel=1),
        dict(num_blocks=1),
        dict(num_blocks=3),
        dict(num_heads=2, n_freqs=10, lr_n_freqs=3),
    ],
)
def test_ablation_knobs_build_run_and_train(knobs):
    torch.manual_seed(0)
    cfg = LoftUpConfig(feat_dim=16, **knobs)
    model = LoftUp(cfg)
    lr, img = inputs(C=16, h=4, w=6, H=24, W=30)
    out = model(lr, img)
    assert out.shape == (2, 16, 24, 30) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    expected_d = 16 + (4 * cfg.lr_n_freqs if cfg.lr_pe == "sine" else 0)
    assert model.upsampler.first_conv[1].out_channels == expected_d


def test_rope_rotation_preserves_norm_and_depends_on_position():
    from loftup.model.layers import Rope2d

    rot = Rope2d(head_dim=13, max_freq=16)
    t = torch.randn(1, 2, 5, 13)
    pos = torch.rand(5, 2) * 2 - 1
    out = rot(t, pos)
    assert torch.allclose(out.norm(dim=-1), t.norm(dim=-1), atol=1e-5)
    assert torch.equal(out[..., 12:], t[..., 12:])  # odd leftover channel passes through
    assert maxdiff(rot(t, pos), rot(t, pos.flip(0))) > 1e-3


def test_output_size_follows_guidance_image(official_model):
    lr = torch.randn(1, 32, 3, 3)
    for H, W in [(1, 1), (7, 3), (33, 64)]:
        with torch.no_grad():
            assert official_model(lr, torch.randn(1, 3, H, W)).shape == (1, 32, H, W)
    with torch.no_grad():
        assert official_model.upsample(lr, torch.randn(1, 3, 10, 10), size=(20, 30)).shape == (1, 32, 20, 30)


@pytest.mark.parametrize(
    "lr_shape, img_shape, match",
    [
        ((1, 16, 4, 4), (1, 3, 20, 20), "16 channels but this upsampler was built for 32"),
        ((1, 32, 4), (1, 3, 20, 20), r"\(B, 32, h, w\)"),
        ((1, 32, 4, 4), (1, 4, 20, 20), r"\(B, 3, H, W\)"),
        ((2, 32, 4, 4), (1, 3, 20, 20), "batch sizes differ"),
    ],
)
def test_bad_inputs_raise_clear_errors(official_model, lr_shape, img_shape, match):
    with pytest.raises(InputError, match=match):
        official_model(torch.randn(*lr_shape), torch.randn(*img_shape))


@pytest.mark.parametrize(
    "knobs, match",
    [
        (dict(lr_pe="sin"), "did you mean 'sine'"),
        (dict(minmax="image"), "per_image"),
        (dict(image_conv_kernel=5), "1 or 3"),
        (dict(feat_dim=30, num_heads=4), "not divisible"),
        (dict(attn_backend="xformers"), "attention backend"),
    ],
)
def test_bad_config_raises(knobs, match):
    with pytest.raises(ConfigError, match=match):
        LoftUp(LoftUpConfig(feat_dim=32, **knobs) if "feat_dim" not in knobs else LoftUpConfig(**knobs))


def test_bf16_autocast_close_to_fp32(official_model):
    lr, img = inputs(B=1)
    with torch.no_grad():
        ref = official_model(lr, img)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = official_model(lr, img)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), low.float().flatten(), dim=0)
    assert cos > 0.99


def test_attention_budget_reaches_the_sdpa_chunks(official_model, monkeypatch):
    """A tiny budget forces many query chunks; the result is unchanged."""
    import loftup.kernels.sdpa as sdpa

    calls = []
    real = sdpa.F.scaled_dot_product_attention
    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(a[0].shape[2]) or real(*a, **k))
    lr, img = inputs(B=1)
    small = LoftUp(official_model.cfg.replace(attn_budget_mb=1)).eval()
    assert small.upsampler.dispatcher.budget_bytes == 2**20
    small.load_state_dict(official_model.state_dict())
    small.upsampler.dispatcher.budget_bytes = 3 * 4 * 4 * 35 * 100  # 100 queries per chunk for M=35 tokens
    with torch.no_grad():
        out = small(lr, img)
    assert max(calls) == 100 and len(calls) == 2 * -(-45 * 61 // 100)  # 2 blocks
    calls.clear()
    with torch.no_grad():
        assert maxdiff(out, official_model(lr, img)) < 1e-5
    assert len(calls) == 2  # default budget: one call per block


def test_window_equals_the_slice_of_the_whole_output():
    torch.manual_seed(0)
    model = LoftUp(LoftUpConfig(feat_dim=16)).eval()
    lr, image = torch.randn(2, 16, 5, 6), torch.randn(2, 3, 37, 41)
    with torch.no_grad():
        full = model(lr, image, tile=False)
        for box in [(0, 0, 9, 11), (13, 7, 20, 30), (30, 33, 7, 8), (0, 0, 37, 41)]:
            t, l, h, w = box
            assert torch.allclose(model(lr, image, window=box), full[:, :, t:t + h, l:l + w], atol=1e-5), box
    with pytest.raises(Exception, match="inside"):
        model(lr, image, window=(30, 0, 10, 5))


def test_positional_init_makes_attention_start_local():
    from loftup.commands.explain import attention_at_pixels

    torch.manual_seed(0)
    model = LoftUp(LoftUpConfig(feat_dim=384, lr_pe="rope")).eval()  # the real width: 24 rotated pairs per axis
    lr, image = torch.randn(1, 384, 16, 16), torch.randn(1, 3, 112, 112)
    pixels = [(3, 3), (56, 40), (108, 20)]
    # the closest of the 16 x 16 tokens on the model's grids (linspace(-1, 1) for pixels and tokens alike)
    nearest = [tuple(round((p / 111) * 15) for p in px) for px in pixels]
    with torch.no_grad():
        before = attention_at_pixels(model, lr, image, pixels).weights[0][0].reshape(3, -1)
        model.upsampler.ca_transformer.init_positional(2.0)
        after = attention_at_pixels(model, lr, image, pixels).weights[0][0].reshape(3, -1)
    assert [divmod(int(a), 16) for a in after.argmax(-1)] == nearest
    assert (after.max(-1).values > 3 * before.max(-1).values).all()
    with pytest.raises(ConfigError, match="rope"):
        LoftUp(LoftUpConfig(feat_dim=16)).upsampler.ca_transformer.init_positional(2.0)


def test_low_frequency_init_makes_the_first_conv_blind_to_the_fast_fourier_channels():
    torch.manual_seed(0)
    up = LoftUp(LoftUpConfig(feat_dim=16)).upsampler
    before = up.first_conv[1].weight.detach().clone()
    up.init_low_frequency(9)
    after = up.first_conv[1].weight.detach()
    feat = up.fourier_feat[1]
    dm, k = feat.dim_multiplier, feat.n_freqs * feat.dim_multiplier  # 5 inputs x 20 frequencies per block
    fast = torch.zeros(after.shape[1], dtype=torch.bool)
    for start in (0, k):
        fast[start + 9 * dm : start + k] = True
    assert int(fast.sum()) == 2 * 11 * dm
    assert (after[:, fast] == 0).all() and torch.equal(after[:, ~fast], before[:, ~fast])
    # the conv's response no longer depends on what those channels carry
    x = torch.randn(1, after.shape[1], 6, 6)
    noisy = torch.where(fast[None, :, None, None], torch.randn_like(x), x)
    conv = up.first_conv[1]
    with torch.no_grad():
        assert torch.allclose(conv(x), conv(noisy), atol=1e-6)
    for bad in (0, 21):
        with pytest.raises(ConfigError, match="keep"):
            up.init_low_frequency(bad)
