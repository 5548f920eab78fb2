"""`loftup upsample` end to end on a bundled photo, and every bad-input case of issue 2."""

import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, run
from PIL import Image
from safetensors.torch import load_file

from loftup.cli import main
from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

BASE = ["upsample", "--backbone", "dinov2_vits14", "--weights", "random", "--size", "56", "--input-size", "28"]


@pytest.fixture()
def photo(tmp_path):
    from loftup.io.samples import load_sample

    path = tmp_path / "in" / "chelsea.png"
    path.parent.mkdir()
    load_sample("chelsea").resize((90, 60)).save(path)
    return path


@pytest.fixture(scope="module")
def ckpt384(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "up384.safetensors"
    return save_checkpoint(LoftUp(LoftUpConfig(feat_dim=384, backbone="dinov2_vits14")), path)


def test_upsample_bundled_photo_end_to_end(tmp_path, capsys, ckpt384):
    out = tmp_path / "out"
    code, stdout, err = run(BASE + ["sample:astronaut", "--checkpoint", ckpt384, "--out", out], capsys)
    assert code == 0, err
    feats = load_file(out / "astronaut.safetensors")
    assert feats["hr_feats"].shape == (384, 56, 56)  # astronaut is square: shorter side 56
    assert feats["lr_feats"].shape == (384, 2, 2)  # 28 px input / patch 14
    assert torch.isfinite(feats["hr_feats"]).all()
    picture = Image.open(out / "astronaut.png")
    assert picture.size[0] > 4 * 56 and picture.size[1] > 56  # four panels side by side
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_upsample_folder_npy_batches_and_keeps_aspect(tmp_path, capsys, ckpt384, photo):
    Image.fromarray(np.full((60, 90, 3), 128, np.uint8)).save(photo.parent / "grey.jpg")
    (photo.parent / "sub").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photo.parent / "sub" / "black.png")
    out = tmp_path / "out"
    code, _, err = run(BASE + [photo.parent, "--checkpoint", ckpt384, "--out", out, "--format", "npy", "--batch-size", "2", "--no-picture"], capsys)
    assert code == 0, err
    assert np.load(out / "chelsea.npy").shape == (384, 56, 84)  # 60x90 -> shorter side 56
    assert np.load(out / "grey.npy").shape == (384, 56, 84)
    assert np.load(out / "sub" / "black.npy").shape == (384, 56, 56)
    assert not list(out.rglob("*.png"))


def test_pictures_only(tmp_path, capsys, ckpt384, photo):
    out = tmp_path / "out"
    code, stdout, err = run(BASE + [photo, "--checkpoint", ckpt384, "--out", out, "--no-features"], capsys)
    assert code == 0, err
    assert "1 picture(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.png"]
    code, _, err = run(BASE + [photo, "--checkpoint", ckpt384, "--out", tmp_path / "none", "--no-features", "--no-picture"], capsys)
    assert_one_line_error(code, err, "would write nothing")
    assert not (tmp_path / "none").exists()


def test_batched_equals_single(tmp_path, capsys, ckpt384, photo):
    Image.open(photo).transpose(Image.FLIP_LEFT_RIGHT).save(photo.parent / "flipped.png")
    for bs, name in ((1, "a"), (2, "b")):
        code, _, err = run(BASE + [photo.parent, "--checkpoint", ckpt384, "--out", tmp_path / name, "--batch-size", bs, "--no-picture"], capsys)
        assert code == 0, err
    for stem in ("chelsea", "flipped"):
        a = load_file(tmp_path / "a" / f"{stem}.safetensors")["hr_feats"]
        b = load_file(tmp_path / "b" / f"{stem}.safetensors")["hr_feats"]
        assert (a - b).abs().max() < 1e-4


def test_random_init_flag_is_required_without_checkpoint(tmp_path, capsys, photo):
    code, _, err = run(BASE + [photo, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "no trained LoftUp weights", "--checkpoint", "--random-init")
    assert not (tmp_path / "o").exists()
    code, _, err = run(BASE + [photo, "--out", tmp_path / "o", "--random-init", "--no-picture"], capsys)
    assert code == 0, err
    assert (tmp_path / "o" / "chelsea.safetensors").exists()


def test_not_an_image(tmp_path, capsys, ckpt384):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    code, _, err = run(BASE + [bad, "--checkpoint", ckpt384, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "notes.png")
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


def test_missing_input_and_empty_folder(tmp_path, capsys, ckpt384):
    code, _, err = run(BASE + [tmp_path / "nope.jpg", "--checkpoint", ckpt384], capsys)
    assert_one_line_error(code, err, "nope.jpg")
    (tmp_path / "empty").mkdir()
    code, _, err = run(BASE + [tmp_path / "empty", "--checkpoint", ckpt384], capsys)
    assert_one_line_error(code, err, "no images")


def test_image_smaller_than_a_patch(tmp_path, capsys, ckpt384):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tiny)
    code, _, err = run(BASE + [tiny, "--checkpoint", ckpt384, "--input-size", "10", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "patch")


def test_checkpoint_channels_do_not_match_backbone(tmp_path, capsys, official_dir, photo):
    code, _, err = run(BASE + [photo, "--checkpoint", official_dir / "loftup_tiny.safetensors", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "32-channel", "384")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_truncated_checkpoint(tmp_path, capsys, ckpt384, photo):
    data = ckpt384.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 3])
    code, _, err = run(BASE + [photo, "--checkpoint", bad, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "cut.safetensors")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--backbone", "dinov2_vits41"], "did you mean 'dinov2_vits14'"),
        (["--attn-backend", "flash"], "attention backend"),
        (["--dtype", "fp8"], "dtype"),
        (["--format", "png"], "format"),
        (["--device", "cuda"], "cuda"),
        (["--size", "0"], "size"),
    ],
)
def test_unknown_names_and_values(tmp_path, capsys, ckpt384, photo, extra, needle):
    code, _, err = run(BASE + [photo, "--checkpoint", ckpt384, "--out", tmp_path / "o"] + extra, capsys)
    assert_one_line_error(code, err, needle)


def test_output_path_is_a_file(tmp_path, capsys, ckpt384, photo):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(BASE + [photo, "--checkpoint", ckpt384, "--out", blocker], capsys)
    assert_one_line_error(code, err, "cannot write")


def test_help_lists_verbs(capsys):
    assert main(["--help"]) == 0
    assert "upsample" in capsys.readouterr().out
