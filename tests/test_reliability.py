"""Issue 30: the ten faults of the 68-case sweep, tried again as a user would. Each run must end
in one `error: ...` line (no traceback), a non-zero exit, no leftovers (no temp file, no staging
folder, no run folder a failed run created) and inputs byte-identical.

Most cases run `loftup.cli.main` in this process (the one error boundary every verb goes
through). The signal cases run the CLI in a subprocess and send it SIGTERM / SIGINT while it
exports. A full disk cannot be mounted without root, so it is simulated in-process: the
feature writer raises what safetensors raised on a real 2 MB tmpfs ("... No space left on
device (os error 28)"), and PNG writes raise OSError(ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, run
from PIL import Image
from safetensors.torch import load_file, save_file

from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
C = 32
TINY = ["--backbone", "reliability_tiny", "--size", "42"]  # a one-block random ViT (C=32, patch 14): fast on CPU


def tiny_backbone(weights: str = "random"):
    import dataclasses

    from loftup.backbones import DinoViT, ViTConfig, get_spec
    from loftup.backbones.registry import Backbone

    cfg = ViTConfig(embed_dim=C, depth=1, num_heads=2, img_size=14 * 6)
    vit = DinoViT(cfg)
    vit.init_weights(torch.Generator().manual_seed(1))
    return Backbone(dataclasses.replace(get_spec("dinov2_vits14"), name="reliability_tiny", embed_dim=C, config=cfg), vit, "random")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from loftup.backbones import register_backbone

    register_backbone("reliability_tiny", tiny_backbone)
    torch.manual_seed(0)
    return save_checkpoint(LoftUp(LoftUpConfig(feat_dim=C, backbone="reliability_tiny")), tmp_path_factory.mktemp("ckpt") / "up.safetensors")


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("good.png", "other.png"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / name)
    return folder


def write_photos(folder: Path, n: int = 4) -> None:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links as their target text): what 'inputs byte-identical' compares."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def leftovers(folder: Path) -> list[str]:
    """Temp files and staging folders anywhere under `folder`."""
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".staging")) or ".loftup-write" in p.name]


# -- 1: a full disk ----------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["features", "picture"])
def test_1_full_disk_is_one_line_naming_the_file(tmp_path, photos, capsys, ckpt, monkeypatch, writer):
    from safetensors import SafetensorError

    def full_features(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")  # what a real write leaves before it fails
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def full_png(self, fp, *a, **k):
        Path(fp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if writer == "features":
        monkeypatch.setattr("safetensors.torch.save_file", full_features)
    else:
        monkeypatch.setattr(Image.Image, "save", full_png)
    before = snapshot(photos)
    out = tmp_path / "out"
    code, _, err = run(["upsample", photos / "good.png", *TINY, "--checkpoint", ckpt, "--out", out], capsys)
    name = "good.safetensors" if writer == "features" else "good.png"
    assert_one_line_error(code, err, "No space left on device", name, "free some space")
    assert code == 1
    if writer == "features":  # nothing was written: the folder the run created is gone
        assert not out.exists()
    else:  # the feature file came first and is complete; the picture left nothing behind
        assert [p.name for p in out.iterdir()] == ["good.safetensors"]
        assert load_file(out / "good.safetensors")["hr_feats"].shape == (C, 42, 63)
    assert snapshot(photos) == before


# -- 2: NaN weights, non-finite outputs ----------------------------------------------------------
def test_2_nan_weights_are_refused_at_load_naming_the_tensor(tmp_path, photos, capsys, ckpt):
    sd = load_file(ckpt)
    name = sorted(k for k in sd if sd[k].is_floating_point())[3]
    sd[name] = sd[name].clone()
    sd[name].view(-1)[5] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(sd, bad, metadata=dict(__import__("safetensors").safe_open(str(ckpt), "pt").metadata()))
    out = tmp_path / "out"
    code, _, err = run(["upsample", photos / "good.png", *TINY, "--checkpoint", bad, "--out", out], capsys)
    assert_one_line_error(code, err, name, "NaN or infinite")
    assert code == 2 and not out.exists()


def test_2_non_finite_outputs_are_refused_before_anything_is_written(tmp_path, photos, capsys, ckpt, monkeypatch):
    from loftup.export.engine import TorchEngine

    real = TorchEngine._run

    def overflow(self, inputs, graphs=True):
        out = real(self, inputs, graphs)
        return out if len(inputs) == 1 else out.index_fill(1, torch.tensor([0]), float("inf"))

    monkeypatch.setattr(TorchEngine, "_run", overflow)
    out = tmp_path / "out"
    code, _, err = run(["upsample", photos / "good.png", *TINY, "--checkpoint", ckpt, "--out", out], capsys)
    assert_one_line_error(code, err, "NaN or infinite", "nothing was written")
    assert code == 2 and not out.exists()


# -- 3: training on unreadable images ------------------------------------------------------------
@pytest.mark.parametrize("out_exists", [False, True])
def test_3_training_data_errors_are_one_line_and_leave_no_run(tmp_path, capsys, out_exists):
    data = tmp_path / "bad"
    data.mkdir()
    for i in range(4):
        (data / f"img{i}.jpg").write_bytes(b"not a jpeg %d" % i)
    run_dir = tmp_path / "run"
    if out_exists:
        run_dir.mkdir()
        (run_dir / "notes.txt").write_text("the user's own file")
    before = snapshot(data)
    code, _, err = run(["train", "--stage", "1", "--data", data, "--out", run_dir, "--steps", "2", "--num-workers", "1",
                        "--size", "28", "--batch-size", "2", "--backbone-weights", "random", "--no-progress"], capsys)
    assert_one_line_error(code, err, "unreadable samples", "UnidentifiedImageError", only_line=False)  # after the skip warnings
    assert code == 2 and "DataLoader worker" not in err
    if out_exists:
        assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]  # its own file stays, the run's files go
    else:
        assert not run_dir.exists()
    assert snapshot(data) == before


def test_3_an_interrupt_before_the_first_step_leaves_no_run(tmp_path, capsys, monkeypatch):
    write_photos(tmp_path / "photos")

    def ctrl_c(self, batch):
        raise KeyboardInterrupt  # Ctrl-C during the first step: nothing saved yet

    monkeypatch.setattr("loftup.train.loop.Trainer.train_step", ctrl_c)
    run_dir = tmp_path / "run"
    code, _, err = run(["train", "--stage", "1", "--data", tmp_path / "photos", "--out", run_dir, "--steps", "2",
                        "--num-workers", "0", "--size", "28", "--batch-size", "2", "--backbone-weights", "random",
                        "--no-progress"], capsys)
    assert_one_line_error(code, err, "interrupted (Ctrl-C)", only_line=False)
    assert code == 130 and not run_dir.exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_3_sigterm_during_training_keeps_a_resumable_checkpoint(tmp_path, capsys, monkeypatch, workers):
    import multiprocessing

    from loftup.train.loop import Trainer
    write_photos(tmp_path / "photos")
    real = Trainer.train_step

    def term_after_first(self, batch):
        metrics = real(self, batch)
        if self.step == 1:
            loaders = [c for c in multiprocessing.active_children() if c.pid not in before]  # the DataLoader's workers
            assert len(loaders) == workers
            for worker in loaders:  # SIGTERM to the whole group, from another process, as systemd or `pkill -f`
                subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # sends it (a worker obeys its parent's)
            time.sleep(1.0)  # the rest of a long step: a worker's death would be reported meanwhile
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends; the loop stops at the step boundary
        return metrics

    monkeypatch.setattr(Trainer, "train_step", term_after_first)
    run_dir = tmp_path / "run"
    before = {c.pid for c in multiprocessing.active_children()}  # other tests' children in this worker
    code, _, err = run(["train", "--stage", "1", "--data", tmp_path / "photos", "--out", run_dir, "--steps", "4",
                        "--num-workers", str(workers), "--size", "28", "--batch-size", "2", "--backbone-weights", "random",
                        "--no-progress"], capsys)
    assert_one_line_error(code, err, "interrupted (SIGTERM)", "stopped at step 1/4", f"--resume --out {run_dir}", only_line=False)
    assert code == 143
    assert (run_dir / "checkpoints" / "step-00000001.safetensors").is_file() and not leftovers(run_dir)


# -- 4 and 5: SIGTERM and Ctrl-C during export ---------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_4_5_signals_during_export_remove_the_staging(tmp_path, sig, code):
    out = tmp_path / "engines"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Python's own Ctrl-C handler even when this test runs in the background (which starts children with SIGINT ignored)
    launcher = "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); runpy.run_module('loftup', run_name='__main__')"
    proc = subprocess.Popen([sys.executable, "-c", launcher, "export", "--random-init", "--backbone", "dinov2_vits14",
                             "--weights", "random", "--min-size", "28", "--opt-size", "28", "--max-size", "56",
                             "--max-batch", "1", "--out", out / "m.onnx"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not list(out.glob("*.staging")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()  # still tracing: the staging folder exists
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=240)
    assert_one_line_error(proc.returncode, err, "interrupted", "no engine written", "staging files were removed", only_line=False)
    assert proc.returncode == code
    assert list(out.iterdir()) == []  # no staging folder, no engine


def test_4_5_a_signal_whose_exception_was_lost_still_stops_the_export(tmp_path, monkeypatch):
    """A signal's Interrupted can be lost before it reaches the exporter (Python drops an exception
    raised inside a finalizer; a library may catch BaseException) - once in CI an export sent
    SIGINT while tracing wrote its engine and exited 0. The recorded signal stops it before the
    engine is moved into place."""
    import loftup.export.onnx as lo
    from loftup.export.exporter import export_model
    from loftup.runtime.interrupts import Interrupted, interrupts_raise, raise_if_interrupted

    def export_that_loses_a_signal(model, path, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, at once
        except KeyboardInterrupt:
            pass  # lost, as in a finalizer
        Path(path).write_bytes(b"an engine")
        return object()

    monkeypatch.setattr(lo, "export_onnx", export_that_loses_a_signal)
    monkeypatch.setattr(lo, "write_metadata", lambda path, md: None)
    out = tmp_path / "engines" / "m.onnx"
    with interrupts_raise(), pytest.raises(Interrupted) as stopped:
        export_model(LoftUp(LoftUpConfig(feat_dim=C)), None, out, fmt="onnx", patch_size=14, check=False)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 143
    assert list(out.parent.iterdir()) == []  # no engine, no staging folder
    try:
        raise_if_interrupted()  # the record ends with interrupts_raise: nothing left to raise
    except KeyboardInterrupt:  # (caught here: pytest would take it for the user's Ctrl-C)
        pytest.fail("a signal recorded inside interrupts_raise() outlived it")


def test_interrupts_raise_records_sigint_only_where_it_is_not_ignored():
    from loftup.runtime.interrupts import Interrupted, interrupts_raise, raise_if_interrupted

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job
    try:
        with interrupts_raise():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with interrupts_raise():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt as exc:
                assert isinstance(exc, Interrupted) and exc.exit_code == 130
            with pytest.raises(Interrupted) as again:
                raise_if_interrupted()
            assert again.value.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, old)


# -- 6: links in an input folder -----------------------------------------------------------------
def test_6_broken_links_and_loops_are_failed_inputs(tmp_path, photos, capsys, ckpt):
    (photos / "broken.png").symlink_to(tmp_path / "gone.png")
    (photos / "loop.png").symlink_to(photos / "loop.png")
    before = snapshot(photos)
    out = tmp_path / "out"
    code, _, err = run(["upsample", photos, *TINY, "--checkpoint", ckpt, "--out", out, "--no-picture"], capsys)
    assert_one_line_error(code, err, "2 input(s) failed", "broken.png", "broken link", "loop.png", "link loop")
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["good.safetensors", "other.safetensors"]  # the good ones still written
    assert snapshot(photos) == before


# -- 7: a foreign graph carrying our metadata ----------------------------------------------------
def foreign_onnx(path: Path, channels: int = 3) -> Path:
    """An ONNX graph that is not a loftup export: `hr_feats` = its 3-channel image, with loftup
    metadata that promises 384 channels."""
    import onnx
    from onnx import TensorProto, helper

    from loftup.export.metadata import EngineMetadata
    from loftup.export.onnx import metadata_props

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["hr_feats"])], "foreign",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("hr_feats", TensorProto.FLOAT, ["batch", channels, "height", "width"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    md = EngineMetadata(format="onnx", scope="pipeline", feat_dim=384, backbone="dinov2_vits14", patch_size=14,
                        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                        input_shapes={"image": {"min": [1, 3, 14, 14], "opt": [1, 3, 224, 224], "max": [4, 3, 448, 448]}})
    for key, value in metadata_props(md).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_7_an_engine_whose_output_contradicts_its_metadata_is_refused(tmp_path, photos, capsys):
    engine = foreign_onnx(tmp_path / "foreign.onnx")
    out = tmp_path / "out"
    code, _, err = run(["upsample", photos / "good.png", "--engine", engine, "--size", "42", "--out", out], capsys)
    assert_one_line_error(code, err, "foreign.onnx", "(1, 3, 42, 63)", "promises float32 (1, 384, 42, 63)", "export the engine again")
    assert code == 2 and not out.exists()


# -- 8: a user's file in --out -----------------------------------------------------------------
def test_8_upsample_never_overwrites_a_file_it_did_not_write(tmp_path, photos, capsys, ckpt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.safetensors").write_bytes(b"the user's own file")
    code, _, err = run(["upsample", photos / "good.png", *TINY, "--checkpoint", ckpt, "--out", out], capsys)
    assert_one_line_error(code, err, "good.safetensors already exists", "--force")
    assert code == 2 and (out / "good.safetensors").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in out.iterdir()) == ["good.safetensors"]  # checked before any work: no picture either
    code, _, err = run(["upsample", photos / "good.png", *TINY, "--checkpoint", ckpt, "--out", out, "--force"], capsys)
    assert code == 0, err
    assert load_file(out / "good.safetensors")["hr_feats"].shape == (C, 42, 63)


def test_8_eval_refuses_an_earlier_result_without_force(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    code, _, err = run(["eval", "--probe", "mini", "--random-init", "--out", out], capsys)
    assert_one_line_error(code, err, "results.json already exists", "--force")
    assert (out / "results.json").read_text() == "{}"


# -- 9: bench with nothing to run ---------------------------------------------------------------
def test_9_bench_with_no_row_run_exits_non_zero_and_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("loftup.bench.harness.measure_gemm_peak", lambda *a, **k: 100.0)  # the peak is not what is tested
    out = tmp_path / "bench"
    code, _, err = run(["bench", "--random-init", "--batch-sizes", "100000", "--sizes", "112", "--precisions", "fp32",
                        "--backends", "torch-sdpa", "--repeats", "1", "--warmup", "0", "--out", out], capsys)
    assert_one_line_error(code, err, "no benchmark row ran", "skipped", "GB", only_line=False)  # after the table
    assert code == 2
    (json_path,) = out.glob("*.json")
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["status"] for r in rows] == ["skipped"] and "GB" in rows[0]["reason"]  # the table that says why


# -- 10: usage errors --------------------------------------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["upsample", "x.png", "--sise", "333"], ("no such option --sise", "did you mean '--size'", "loftup upsample --help")),
    (["upsampel", "x.png"], ("no such command 'upsampel'", "did you mean 'upsample'")),
    (["upsample", "x.png", "--size", "big"], ("Invalid value for '--size'",)),
])
def test_10_usage_errors_are_one_line_with_the_closest_name(capsys, args, needles):
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, *needles)
    assert code == 2


# -- the boundary itself -----------------------------------------------------------------------
def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path, photos, capsys, monkeypatch):
    def broken(*a, **k):
        raise ValueError("something no one planned for\nsecond line")

    monkeypatch.setattr("loftup.commands.upsample.collect_inputs", broken)
    code, _, err = run(["upsample", photos / "good.png", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "unexpected ValueError: something no one planned for", "--debug", "LOFTUP_DEBUG=1")
    assert code == 1 and "second line" not in err
    with pytest.raises(ValueError, match="no one planned"):
        run(["--debug", "upsample", photos / "good.png", "--out", tmp_path / "o"], capsys)
    monkeypatch.setenv("LOFTUP_DEBUG", "1")
    with pytest.raises(ValueError, match="no one planned"):
        run(["upsample", photos / "good.png", "--out", tmp_path / "o"], capsys)


def test_a_read_only_output_is_one_line_naming_the_path(tmp_path, photos, capsys, ckpt, monkeypatch):
    def read_only(tensors, filename, metadata=None):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), filename)

    monkeypatch.setattr("safetensors.torch.save_file", read_only)
    out = tmp_path / "out"
    code, _, err = run(["upsample", photos / "good.png", *TINY, "--checkpoint", ckpt, "--out", out, "--no-picture"], capsys)
    assert_one_line_error(code, err, str(out / "good.safetensors"), "Read-only file system", "choose another path")
    assert not out.exists()


def test_sigterm_during_upsample_keeps_only_complete_files(tmp_path, photos, capsys, ckpt, monkeypatch):
    from loftup.commands import upsample as up

    real = up.save_features

    def term_after_first(path, *a, **k):
        written = real(path, *a, **k)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the run is writing
        return written

    monkeypatch.setattr(up, "save_features", term_after_first)
    before = snapshot(photos)
    out = tmp_path / "out"
    code, _, err = run(["upsample", photos, *TINY, "--checkpoint", ckpt, "--out", out, "--no-picture"], capsys)
    assert_one_line_error(code, err, "interrupted (SIGTERM)", "are complete")
    assert code == 143
    assert [p.name for p in out.iterdir()] == ["good.safetensors"]  # the first file, whole; nothing half-written
    assert load_file(out / "good.safetensors")["hr_feats"].shape == (C, 42, 63)
    assert snapshot(photos) == before
