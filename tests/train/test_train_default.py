"""scripts/train_default.py (the script that trains the shipped checkpoint): an interrupted run
resumed from its state.pt ends bit-exactly where an uninterrupted run ends, and the final file
records how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import TinyBackbone, load_script, write_photos

from loftup.backbones import register_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def _script():
    return load_script("train_default")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    register_backbone("tiny_default_bb", lambda weights: TinyBackbone(16, 8))
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, n=4, side=64)
    return folder


def _run(mod, photos: Path, out: Path, steps: int, *extra: str) -> None:
    args = ["--photos", str(photos), "--out", str(out), "--steps", str(steps), "--views", "2", "--save-every", "2",
            "--threads", "1", "--backbone", "tiny_default_bb", "--weights", "random", "--size", "64", *extra]
    assert mod.main(args) == 0


def test_resume_is_bit_exact_and_the_final_file_says_how_it_was_made(photos, tmp_path):
    mod = _script()
    _run(mod, photos, tmp_path / "straight", 4)
    # the same run stopped after step 3, then resumed to step 4
    _run(mod, photos, tmp_path / "split", 4, "--stop-after", "3")  # state.pt at step 3, no final file
    assert not (tmp_path / "split" / "final.safetensors").exists()
    _run(mod, photos, tmp_path / "split", 4, "--resume")
    a = load_file(tmp_path / "straight" / "step4.safetensors")
    b = load_file(tmp_path / "split" / "step4.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loss = lambda run: [ln.split(",")[1] for ln in (tmp_path / run / "log.csv").read_text().splitlines()[1:]]  # noqa: E731
    assert loss("straight") == loss("split") and len(loss("split")) == 4  # the log holds each step once
    meta = json.loads((tmp_path / "split" / "final.json").read_text())["meta"]
    assert meta["step"] == 4 and meta["photos"] == sorted(p.name for p in photos.iterdir())
    assert "--resume" in meta["command"] and meta["config"]["target"] == "oracle"


def test_resume_refuses_a_run_with_other_settings_or_no_state(photos, tmp_path):
    mod = _script()
    with pytest.raises(SystemExit, match="nothing to resume"):
        _run(mod, photos, tmp_path / "none", 2, "--resume")
    _run(mod, photos, tmp_path / "run", 4, "--stop-after", "2")
    with pytest.raises(SystemExit, match="other settings"):
        _run(mod, photos, tmp_path / "run", 4, "--resume", "--views", "3")


def test_smoothness_and_low_frequency_options_reach_the_run(photos, tmp_path):
    mod = _script()
    _run(mod, photos, tmp_path / "blind", 1, "--low-frequency-init", "9")
    _run(mod, photos, tmp_path / "smooth", 1, "--tv-weight", "50", "--low-frequency-init", "9")
    loss = lambda run: float((tmp_path / run / "log.csv").read_text().splitlines()[1].split(",")[1])  # noqa: E731
    assert loss("smooth") > 1.01 * loss("blind")  # the same model and first batch, plus the smoothness term
    meta = json.loads((tmp_path / "smooth" / "final.json").read_text())["meta"]
    assert (meta["config"]["tv_weight"], meta["config"]["low_frequency_init"]) == (50.0, 9)
    w = load_file(tmp_path / "smooth" / "step1.safetensors")["upsampler.first_conv.1.weight"].float()
    fast = torch.cat([w[:, 45:100], w[:, 145:200]], dim=1)  # frequencies 10-20 of the sin and cos blocks
    assert fast.abs().max() < 1e-4 < w[:, :45].abs().mean()  # started at zero, one warm-up step of AdamW since


def test_target_blend_option_reaches_the_run(photos, tmp_path):
    mod = _script()
    _run(mod, photos, tmp_path / "plain", 1)
    _run(mod, photos, tmp_path / "mixed", 1, "--target-blend", "0.5")
    loss = lambda run: float((tmp_path / run / "log.csv").read_text().splitlines()[1].split(",")[1])  # noqa: E731
    assert abs(loss("mixed") - loss("plain")) > 0.01 * loss("plain")  # the same model and batch, another target
    meta = json.loads((tmp_path / "mixed" / "final.json").read_text())["meta"]
    assert meta["config"]["target_blend"] == 0.5 and "--target-blend 0.5" in meta["command"]


def test_lr_consistency_option_reaches_the_run(photos, tmp_path):
    mod = _script()
    _run(mod, photos, tmp_path / "plain", 1)
    _run(mod, photos, tmp_path / "held", 1, "--lr-consistency", "2")
    loss = lambda run: float((tmp_path / run / "log.csv").read_text().splitlines()[1].split(",")[1])  # noqa: E731
    assert loss("held") > 1.01 * loss("plain")  # the same model and batch, plus the per-patch term
    meta = json.loads((tmp_path / "held" / "final.json").read_text())["meta"]
    assert meta["config"]["lr_consistency"] == 2.0


def test_precision_option_reaches_the_run_and_bf16_warns_where_emulated(photos, tmp_path, capsys, monkeypatch):
    import loftup.runtime.devices as devices

    mod = _script()
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    _run(mod, photos, tmp_path / "bf16", 1)  # the default: the shipped file's recipe
    assert "warning: loftup: this CPU has no bf16 instructions" in capsys.readouterr().out
    _run(mod, photos, tmp_path / "fp32", 1, "--precision", "fp32")
    assert "no bf16 instructions" not in capsys.readouterr().out
    loss = lambda run: float((tmp_path / run / "log.csv").read_text().splitlines()[1].split(",")[1])  # noqa: E731
    assert loss("fp32") != loss("bf16") and loss("fp32") == pytest.approx(loss("bf16"), rel=0.05)  # same batch, other arithmetic
    precision = lambda run: json.loads((tmp_path / run / "final.json").read_text())["meta"]["config"]["precision"]  # noqa: E731
    assert (precision("bf16"), precision("fp32")) == ("bf16", "fp32")


def test_crop_scale_option_reaches_the_views_and_a_cache_of_other_views_is_refused(photos, tmp_path):
    mod = _script()
    _run(mod, photos, tmp_path / "plain", 1)
    _run(mod, photos, tmp_path / "close", 1, "--crop-scale", "0.2,0.4")
    a, b = (torch.load(tmp_path / run / "features.pt", weights_only=True) for run in ("plain", "close"))
    assert torch.equal(a["lr"][0], b["lr"][0])  # view 0 is each photo whole
    assert not torch.equal(a["lr"][1], b["lr"][1])  # the random crop is closer
    meta = json.loads((tmp_path / "close" / "final.json").read_text())["meta"]
    assert meta["config"]["crop_scale"] == [0.2, 0.4] and "--crop-scale 0.2,0.4" in meta["command"]
    with pytest.raises(SystemExit, match="caches other views"):
        _run(mod, photos, tmp_path / "reuse", 1, "--crop-scale", "0.2,0.4", "--cache", str(tmp_path / "plain" / "features.pt"))
    assert not (tmp_path / "reuse" / "step1.safetensors").exists()
    with pytest.raises(SystemExit):  # argparse: one usage line
        mod.parse_args(["--out", "x", "--crop-scale", "0.2"])


def test_the_channel_norm_stays_fixed_unless_asked(photos, tmp_path):
    """As `loftup train`: the preset's train_channelnorm false keeps the low-res norm (the target's
    space) fixed; --train-channelnorm (how the shipped file was trained) lets it move."""
    mod = _script()
    _run(mod, photos, tmp_path / "fixed", 2)
    _run(mod, photos, tmp_path / "moving", 2, "--train-channelnorm")
    w = {run: load_file(tmp_path / run / "step2.safetensors")["channelnorm.norm.weight"] for run in ("fixed", "moving")}
    assert torch.equal(w["fixed"], torch.ones_like(w["fixed"])) and not torch.equal(w["moving"], w["fixed"])
    config = lambda run: json.loads((tmp_path / run / "final.json").read_text())["meta"]["config"]  # noqa: E731
    assert (config("fixed")["train_channelnorm"], config("moving")["train_channelnorm"]) == (False, True)


def test_collection_flags_reach_collect_photos_and_are_refused_with_photos(photos, tmp_path, monkeypatch):
    mod = _script()
    with pytest.raises(SystemExit, match="with --photos, collect them"):
        _run(mod, photos, tmp_path / "run", 2, "--hold-out")
    calls = []
    monkeypatch.setattr(mod.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Path(cmd[-3]).mkdir(parents=True))
    with pytest.raises(SystemExit, match="no .png/.jpg photos"):  # the stand-in collects nothing
        mod.photo_files(mod.parse_args(["--out", str(tmp_path / "out"), "--extended", "--hold-out"]), print)
    assert calls[0][-4:] == ["--out", str(tmp_path / "out" / "photos"), "--extended", "--hold-out"]
