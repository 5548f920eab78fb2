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


def test_dtype_bf16_runs_and_stays_close_to_fp32(tmp_path, capsys, ckpt384):
    """`--dtype bf16` (autocast) gives finite features within the bf16 parity tolerance of the fp32
    run (`loftup.export.parity.TOLERANCES`: max abs 0.5, mean cos 0.999, min cos 0.99) - and
    not the fp32 numbers themselves."""
    from loftup.export.parity import TOLERANCES, compare

    feats = {}
    for dtype in ("fp32", "bf16"):
        code, _, err = run(BASE + ["sample:astronaut", "--checkpoint", ckpt384, "--dtype", dtype, "--no-picture",
                                   "--out", tmp_path / dtype], capsys)
        assert code == 0, err
        feats[dtype] = load_file(tmp_path / dtype / "astronaut.safetensors")["hr_feats"]
    assert feats["bf16"].dtype == torch.float32 and torch.isfinite(feats["bf16"]).all()
    err = compare(feats["bf16"][None], feats["fp32"][None])
    assert TOLERANCES["bf16"].passes(err), err
    assert err["max_abs"] > 1e-4  # it really ran in bf16


def test_memory_budget_reaches_the_tiling(tmp_path, capsys, ckpt384, monkeypatch):
    """`--memory-budget` sets the budget LoftUp's tiling plans from: with the process said to
    hold 300 MB, 440 MB leaves room for ~1500 output pixels per tile (39 x 39 squares on the
    56 x 56 output), 64 GB for one untiled pass; tiles are exact up to rounding, so the features agree. A
    budget below the resident memory is refused in one line, before any file is written."""
    import loftup.runtime.budget as budget_mod
    from loftup.model.upsampler import LoftUpUpsampler

    MB = 2**20
    monkeypatch.setattr(budget_mod, "current_rss", lambda: 300 * MB)
    plans, real = [], LoftUpUpsampler._tiles
    monkeypatch.setattr(LoftUpUpsampler, "_tiles", lambda self, *args: plans.append(args[7]) or real(self, *args))  # args[7]: plan
    feats = {}
    for budget in ("64GB", "440MB"):
        code, _, err = run(BASE + ["sample:astronaut", "--checkpoint", ckpt384, "--memory-budget", budget, "--no-picture",
                                   "--out", tmp_path / budget], capsys)
        assert code == 0, err
        feats[budget] = load_file(tmp_path / budget / "astronaut.safetensors")["hr_feats"]
    assert plans[0] is None and plans[1] is not None and max(plans[1]) < 56, plans
    # exact up to rounding: the CPU variant's Winograd convs tile each window from its own first
    # row, so their rounding (~5e-5 of the conv output's scale) differs between tilings
    assert (feats["440MB"] - feats["64GB"]).abs().max().item() < 1e-4
    code, _, err = run(BASE + ["sample:astronaut", "--checkpoint", ckpt384, "--memory-budget", "200MB", "--out",
                               tmp_path / "small"], capsys)
    assert_one_line_error(code, err, "too small", "raise --memory-budget")
    assert not list((tmp_path / "small").glob("*.safetensors")) if (tmp_path / "small").exists() else True


def test_threads_reach_pytorch(tmp_path, capsys, ckpt384, monkeypatch):
    seen, real = [], LoftUp.forward
    monkeypatch.setattr(LoftUp, "forward", lambda self, *a, **k: seen.append(torch.get_num_threads()) or real(self, *a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, _, err = run(BASE + ["sample:astronaut", "--checkpoint", ckpt384, "--threads", "1", "--no-picture",
                                   "--out", tmp_path / "o"], capsys)
    finally:
        torch.set_num_threads(before)
    assert code == 0, err
    assert seen and set(seen) == {1}  # the forward pass ran on one intra-op thread


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
