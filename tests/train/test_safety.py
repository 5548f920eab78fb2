"""Issue 11, training: resume into the folder the user names, fall back past damaged checkpoints,
refuse an unusable --out before any work, and refuse --steps 0."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from test_cli import FAST, one_line_error, run
from train_helpers import TinyBackbone, write_photos

from loftup.errors import CheckpointError
from loftup.train import Trainer, build_config


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_writes_into_the_given_out_not_the_saved_one(tmp_path, capsys, monkeypatch):
    """A run started with relative --data/--out, copied, and resumed from another directory."""
    (tmp_path / "a").mkdir()
    write_photos(tmp_path / "a" / "photos", n=4, side=40)
    monkeypatch.chdir(tmp_path / "a")
    code, _, err = run(capsys, "--stage", 1, "--data", "photos", "--out", "run", *FAST)
    assert code == 0, err
    saved = yaml.safe_load(Path("run/config.yaml").read_text())
    assert saved["out"] == "." and saved["data"] == str((tmp_path / "a" / "photos").resolve())

    original = tmp_path / "a" / "run"
    copy = tmp_path / "b" / "copy"
    shutil.copytree(original, copy)
    before = snapshot(original)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["out"] = str(original)  # what older versions saved: must be ignored
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "c").mkdir()
    monkeypatch.chdir(tmp_path / "c")
    code, out, err = run(capsys, "--resume", "--out", "../b/copy", "--steps", 2, "--no-progress")
    assert code == 0, err
    assert "step 2/2" in out
    assert (copy / "checkpoints" / "step-00000002.safetensors").is_file()
    assert snapshot(original) == before  # the original run folder is untouched
    assert not list((tmp_path / "c").iterdir())


@pytest.fixture()
def run_with_two_checkpoints(tmp_path):
    write_photos(tmp_path / "photos", n=4, side=40)
    cfg = build_config(1, "paper", data=str(tmp_path / "photos"), out=str(tmp_path / "run"), steps=3, batch_size=2,
                       size=28, num_workers=0, progress=False, save_every=1, keep_last=0)
    Trainer(cfg, backbone=TinyBackbone()).fit(max_steps=2)
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step-00000002"
    return cfg, ckpt


def test_resume_falls_back_to_the_newest_readable_checkpoint(run_with_two_checkpoints, capsys):
    cfg, ckpt = run_with_two_checkpoints
    capsys.readouterr()
    weights = ckpt / "step-00000002.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut short, e.g. by a full disk
    trainer = Trainer(cfg, backbone=TinyBackbone(), resume=True)
    err = capsys.readouterr().err
    assert trainer.step == 1
    assert "skipping the step-2 checkpoint: cannot read checkpoint" in err and "step-00000002.safetensors" in err
    assert "resuming from step 1, the newest readable checkpoint" in err
    result = trainer.fit()
    trainer.close()
    assert result.step == 3 and (ckpt / "latest").read_text().strip() == "step-00000003"


def test_resume_with_no_readable_checkpoint_is_one_error(run_with_two_checkpoints, capsys):
    cfg, ckpt = run_with_two_checkpoints
    for step in (1, 2):
        state = ckpt / f"step-{step:08d}.state.pt"
        state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*\(tried steps 2, 1\); start a new run") as exc:
        Trainer(cfg, backbone=TinyBackbone(), resume=True)
    assert "\n" not in str(exc.value)
    assert "skipping the step-1 checkpoint: cannot read training state" in capsys.readouterr().err


@pytest.fixture()
def readonly_dir(tmp_path):
    """A folder nobody can create files in (chmod when not root; root ignores that, so /sys there)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    candidates = [d, Path("/sys")]
    try:
        for c in candidates:
            try:
                fd, probe = tempfile.mkstemp(dir=c)
            except OSError:
                yield c
                break
            os.close(fd)
            os.unlink(probe)
        else:
            pytest.skip("no read-only folder on this machine (running as root without a read-only mount)")
    finally:
        d.chmod(0o755)


@pytest.fixture()
def no_backbone(monkeypatch):
    """Fails the test if a backbone is built (the --out check must come first)."""
    import loftup.backbones

    def forbidden(*args, **kwargs):
        raise AssertionError("a backbone was built before --out was checked")

    monkeypatch.setattr(loftup.backbones, "create_backbone", forbidden)


def test_out_in_a_readonly_folder_fails_up_front(tmp_path, capsys, readonly_dir, no_backbone):
    write_photos(tmp_path / "photos", n=2, side=40)
    before = sorted(os.listdir(readonly_dir))
    code, _, err = run(capsys, "--stage", 1, "--data", tmp_path / "photos", "--out", readonly_dir / "run", *FAST)
    line = one_line_error(err)
    assert code == 2 and "cannot write to" in line and "is not writable" in line and "--out" in line
    assert sorted(os.listdir(readonly_dir)) == before


def test_out_that_is_a_file_fails_up_front(tmp_path, capsys, no_backbone):
    write_photos(tmp_path / "photos", n=2, side=40)
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for out in (target, target / "run"):
        code, _, err = run(capsys, "--stage", 1, "--data", tmp_path / "photos", "--out", out, *FAST)
        line = one_line_error(err)
        assert code == 2 and "is a file, not a folder" in line
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_must_be_positive(tmp_path, capsys, steps):
    write_photos(tmp_path / "photos", n=2, side=40)
    args = [a for a in FAST if a not in ("--steps", "1")]
    code, _, err = run(capsys, "--stage", 1, "--data", tmp_path / "photos", "--out", tmp_path / "run", *args, "--steps", steps)
    line = one_line_error(err)
    assert code == 2 and f"--steps must be a positive number of optimisation steps, got {steps}" in line
    assert not (tmp_path / "run").exists()
