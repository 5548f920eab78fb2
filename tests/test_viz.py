"""`loftup viz`: attention maps are the model's own attention rows, pseudo-GT is training's own
target, and each subcommand draws its picture or gives one clear line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, run
from PIL import Image

from loftup.commands.explain import attention_at_pixels, pseudo_gt
from loftup.model import LoftUp, LoftUpConfig, save_checkpoint


class RecordingAttention:
    """A materialised reference attention that keeps its (B, heads, N, M) weights."""

    def __init__(self):
        self.weights = None

    def head_pad(self, device, head_dim):
        return 0

    def __call__(self, q, k, v, scale):
        self.weights = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, dim=-1)
        return (self.weights @ v.double()).to(q.dtype)


def small_model(seed=0, **cfg):
    torch.manual_seed(seed)
    return LoftUp(LoftUpConfig(feat_dim=16, **cfg)).eval()


PIXELS = [(0, 0), (7, 12), (19, 30), (23, 31)]


def test_attention_maps_are_rows_of_the_full_attention():
    model = small_model()
    lr, image = torch.randn(1, 16, 5, 6), torch.randn(1, 3, 24, 32)
    maps = attention_at_pixels(model, lr, image, PIXELS)
    recorders = []
    for block, _ in model.upsampler.ca_transformer.layers:
        block.attention.dispatcher = RecordingAttention()
        recorders.append(block.attention.dispatcher)
    with torch.no_grad():
        model(lr, image)
    assert len(maps.weights) == len(recorders) == 2 and len(maps.weights[0]) == 4
    for b, rec in enumerate(recorders):
        full = rec.weights[0]  # (heads, H*W, h*w)
        for h in range(full.shape[0]):
            got = maps.weights[b][h]  # (n, 5, 6)
            assert torch.allclose(got.sum(dim=(1, 2)), torch.ones(len(PIXELS)), atol=1e-6)
            for i, (y, x) in enumerate(PIXELS):
                want = full[h, y * 32 + x].reshape(5, 6).float()
                assert (got[i] - want).abs().max() < 1e-6


def test_a_pixel_attends_to_its_own_neighbourhood_when_built_to():
    """RoPE with constant queries and keys: the logit is s^2/sqrt(d) (cos(pi dy) + cos(pi dx)), so
    each pixel must prefer the token nearest to it (pixels kept inside [-0.5, 0.5], where that holds)."""
    model = small_model(lr_pe="rope", num_heads=4)  # token width 16, head dim 4: one y pair, one x pair
    d, s = 4, 8.0
    u = torch.tensor([s, 0.0, s, 0.0]).repeat(4)  # per head: (y pair, x pair) at the lowest frequency
    with torch.no_grad():
        for block, _ in model.upsampler.ca_transformer.layers:
            attn = block.attention
            attn.in_proj_weight[: 2 * 16].zero_()
            attn.in_proj_bias[:16] = u  # q
            attn.in_proj_bias[16:32] = u  # k
    h, w, H, W = 4, 4, 40, 40
    pixels = [(15, 15), (20, 24), (12, 27), (26, 13)]
    maps = attention_at_pixels(model, torch.randn(1, 16, h, w), torch.randn(1, 3, H, W), pixels)
    coords = torch.linspace(-1, 1, h)
    for i, (y, x) in enumerate(pixels):
        cy, cx = -1 + 2 * y / (H - 1), -1 + 2 * x / (W - 1)
        ty, tx = int((coords - cy).abs().argmin()), int((coords - cx).abs().argmin())
        for block in maps.weights:
            for head in block:
                m = head[i]
                assert divmod(int(m.argmax()), w) == (ty, tx)
                assert float(m[max(0, ty - 1) : ty + 2, max(0, tx - 1) : tx + 2].sum()) > 0.8
    assert d == model.cfg.head_dim


def test_pseudo_gt_is_the_training_target(tmp_path, monkeypatch):
    """One real training step captures the stage-1 target it regresses; viz must give the same bits."""
    from loftup.io.samples import load_sample
    from loftup.train import build_config, train
    import loftup.train.stage1 as stage1

    photo = tmp_path / "photos" / "coffee.png"
    photo.parent.mkdir()
    load_sample("coffee").resize((90, 70)).save(photo)
    sys_backbone = tiny_backbone()
    captured = {}
    real = stage1.mask_bicubic_target

    def spy(lr_normed, masks, size, alpha=0.8, mode="vectorised"):
        out = real(lr_normed, masks, size, alpha, mode)
        captured.setdefault("target", out.clone())
        captured.setdefault("masks", masks.clone())
        return out

    monkeypatch.setattr(stage1, "mask_bicubic_target", spy)
    cfg = build_config(1, "paper", data=str(photo.parent), out=str(tmp_path / "run"), backbone="tiny", size=28, batch_size=1,
                       masks="slic", steps=1, seed=5, num_workers=0, progress=False, log_every=1)
    train(cfg, backbone=sys_backbone)
    monkeypatch.setattr(stage1, "mask_bicubic_target", real)
    gt = pseudo_gt(photo, sys_backbone, "slic", 28, seed=5)
    assert torch.equal(gt.masks[None], captured["masks"].cpu())
    assert torch.equal(gt.refined, captured["target"][0].cpu())  # bit for bit
    assert not torch.equal(gt.raw, gt.refined)


def tiny_backbone():
    from loftup.backbones import DinoViT, ViTConfig
    from loftup.backbones.registry import Backbone, get_spec
    import dataclasses

    cfg = ViTConfig(embed_dim=16, depth=1, num_heads=2, img_size=14 * 4)
    spec = dataclasses.replace(get_spec("dinov2_vits14"), name="tiny", embed_dim=16, config=cfg)
    vit = DinoViT(cfg)
    vit.init_weights(torch.Generator().manual_seed(1))
    return Backbone(spec, vit, "random init (seed 1)")


# -- CLI ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(LoftUp(LoftUpConfig(feat_dim=384, backbone="dinov2_vits14")),
                           tmp_path_factory.mktemp("ckpt") / "up.safetensors")


COMMON = ["--weights", "random", "--size", "56"]


def test_viz_features_cli(tmp_path, capsys, ckpt):
    code, stdout, err = run(["viz", "features", "sample:chelsea", "--upsamplers", f"loftup:{ckpt},bilinear,lowres",
                             *COMMON, "--out", tmp_path, "--html"], capsys)
    assert code == 0, err
    picture = Image.open(tmp_path / "chelsea_features.png")
    assert picture.size[0] > 4 * 56  # input + three panels
    assert (tmp_path / "index.html").read_text().count("data:image/png;base64,") == 1


def test_viz_features_other_kinds(tmp_path, capsys, ckpt):
    from loftup.model import build_upsampler

    torch.manual_seed(0)
    lift = save_checkpoint(build_upsampler("lift", 384), tmp_path / "lift.safetensors")
    code, _, err = run(["viz", "features", "sample:chelsea", "--upsamplers", f"lift:{lift},loftup:{ckpt}", *COMMON,
                        "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "chelsea_features.png").size[0] > 3 * 56
    code, _, err = run(["viz", "features", "sample:chelsea", "--upsamplers", f"loftup:{lift}", *COMMON, "--out", tmp_path / "p"], capsys)
    assert_one_line_error(code, err, "holds a lift upsampler", "write lift:")


def test_viz_attention_cli(tmp_path, capsys, ckpt):
    code, stdout, err = run(["viz", "attention", "sample:chelsea", "--checkpoint", ckpt, "--pixels", "5,5;40,60",
                             "--block", "1", "--head", "2", *COMMON, "--out", tmp_path], capsys)
    assert code == 0, err
    weights = np.load(tmp_path / "chelsea_attention.npy")
    assert weights.shape == (1, 1, 2, 4, 6)  # (blocks, heads, pixels, h, w): chelsea 451x300 -> 56x84 output, 4x6 tokens
    assert np.allclose(weights.sum(axis=(-1, -2)), 1.0, atol=1e-5)
    assert (tmp_path / "chelsea_attention_b1_h2.png").exists()


def test_viz_pseudo_gt_cli(tmp_path, capsys, ckpt):
    from loftup.io.samples import load_sample

    photo = tmp_path / "cat.png"
    load_sample("chelsea").resize((80, 60)).save(photo)
    code, _, err = run(["viz", "pseudo-gt", photo, "--masks", "felzenszwalb", "--teacher", ckpt, *COMMON,
                        "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "cat_pseudo_gt.png").size[1] > 3 * 56  # student row + two teacher crops


@pytest.mark.parametrize(
    "args, needles",
    [
        (["attention", "sample:chelsea", "--checkpoint", "{ckpt}", "--pixels", "500,5"], ("outside", "56x84")),
        (["attention", "sample:chelsea", "--checkpoint", "{ckpt}", "--pixels", "5"], ("--pixels",)),
        (["attention", "sample:chelsea", "--checkpoint", "{ckpt}", "--pixels", "5,5", "--block", "7"], ("--block 7",)),
        (["attention", "sample:chelsea", "--checkpoint", "model.onnx", "--pixels", "5,5"], ("exported engine", "cannot be read out")),
        (["features", "sample:chelsea", "--upsamplers", "loftpu:{ckpt}"], ("unknown upsampler", "did you mean 'loftup'")),
        (["features", "sample:chelsea", "--upsamplers", "loftup"], ("needs a file",)),
        (["pseudo-gt", "sample:chelsea", "--masks", "slic"], ("not an image file",)),
        (["pseudo-gt", "{photo}", "--masks", "sam"], ("unknown masks",)),
    ],
)
def test_viz_bad_input_is_one_line(tmp_path, capsys, ckpt, args, needles):
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(photo)
    args = [a.format(ckpt=ckpt, photo=photo) for a in args]
    code, _, err = run(["viz", *args, *COMMON, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, *needles)
    assert not list((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True
