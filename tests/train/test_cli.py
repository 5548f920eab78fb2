"""`loftup train` through loftup.cli.main: bad input gives one clear line and exit code 2."""

import pytest
import torch
from train_helpers import write_photos

from loftup.cli import main
from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

FAST = ["--backbone", "dinov2_vits14", "--backbone-weights", "random", "--size", "28", "--batch-size", "4",
        "--steps", "1", "--num-workers", "0", "--no-progress"]


def run(capsys, *args):
    code = main(["train", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    assert not any(line.startswith("error: ") for line in lines[:-1])
    return lines[-1]


def test_missing_data_dir(tmp_path, capsys):
    code, _, err = run(capsys, "--stage", 1, "--data", tmp_path / "nope", "--out", tmp_path / "run", *FAST)
    assert code == 2 and "does not exist" in one_line_error(err)


def test_no_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    code, _, err = run(capsys, "--stage", 1, "--data", tmp_path / "empty", "--out", tmp_path / "run", *FAST)
    assert code == 2 and "no usable training images" in one_line_error(err)


def test_corrupt_image_is_skipped_and_counted(tmp_path, capsys):
    write_photos(tmp_path / "photos", n=3, side=40)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    code, out, err = run(capsys, "--stage", 1, "--data", tmp_path / "photos", "--out", tmp_path / "run", *FAST)
    assert code == 0, err
    assert "warning: skipped unreadable sample broken.jpg" in err
    assert "skipped 1 unreadable samples" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_unreadable_init_checkpoint(tmp_path, capsys):
    write_photos(tmp_path / "photos", n=4, side=40)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    code, _, err = run(capsys, "--stage", 1, "--data", tmp_path / "photos", "--out", tmp_path / "run", "--init", bad, *FAST)
    assert code == 2 and "cannot read checkpoint" in one_line_error(err)


def test_init_channels_must_match_the_backbone(tmp_path, capsys):
    write_photos(tmp_path / "photos", n=4, side=40)
    torch.manual_seed(0)
    ckpt = save_checkpoint(LoftUp(LoftUpConfig(feat_dim=16)), tmp_path / "c16.safetensors")
    code, _, err = run(capsys, "--stage", 2, "--data", tmp_path / "photos", "--out", tmp_path / "run", "--init", ckpt, *FAST)
    line = one_line_error(err)
    assert code == 2 and "16-channel" in line and "384" in line


@pytest.mark.parametrize("args, match", [
    (["--stage", 2], "--init"),
    (["--stage", 1, "--backbone", "dinov2_vits15"], "did you mean 'dinov2_vits14'"),
    (["--stage", 1, "--preset", "papers"], "did you mean 'paper'"),
    (["--stage", 1, "--precision", "fp16", "--device", "cpu"], "bf16"),
    (["--stage", 1, "--size", "30"], "multiple of"),
    (["--stage", 1, "--set", "ema_decay=2"], "ema_decay"),
])
def test_bad_options(tmp_path, capsys, args, match):
    write_photos(tmp_path / "photos", n=4, side=40)
    fast = [a for a in FAST if a not in ("--size", "28")] if "--size" in args else FAST
    code, _, err = run(capsys, "--data", tmp_path / "photos", "--out", tmp_path / "run", *fast, *args)
    assert code == 2 and match in one_line_error(err)


def test_resume_needs_a_run(tmp_path, capsys):
    code, _, err = run(capsys, "--resume", "--out", tmp_path / "nothing")
    assert code == 2 and "nothing to resume" in one_line_error(err)
