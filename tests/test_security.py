"""Issue 11: nothing in a file a user hands us ever runs, and every unreadable file is one clear line.

The payload: a scripted module whose `__setstate__` maps a marker file with
`torch.from_file(shared=True)` (which creates it) - what `torch.jit.load` runs while loading.
Every loader and every CLI verb that takes a checkpoint or weights must leave the marker
unwritten and answer with one CheckpointError line.
"""

from __future__ import annotations

import io
import pickle
import random
import sys
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch
from cli_support import assert_one_line_error, run
from safetensors.torch import save_file
from torch import nn

from loftup.errors import CheckpointError
from loftup.io import load_weights_only, read_tensors
from loftup.model import LoftUp, LoftUpConfig, load_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).parent / "eval"))  # eval_fixtures: dataset writers, tiny_conv backbone

# building the payloads uses torch.jit.script / torch.jit.load, which torch marks deprecated
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


class MarkerOnLoad(nn.Module):
    """Its scripted __setstate__ creates the file named in its state (runs inside torch.jit.load)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.weight = nn.Parameter(torch.arange(6.0).view(2, 3))

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
        return (self.marker, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
        self.marker = state[0]
        self.weight = state[1]
        touched = torch.from_file(self.marker, shared=True, size=4, dtype=torch.uint8)
        self.training = bool(touched.fill_(65).sum() > 0) and state[2]  # used, so not optimised away


def payload_archive(path: Path, marker: Path) -> Path:
    torch.jit.script(MarkerOnLoad(str(marker))).save(str(path))
    return path


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """(archive, marker): the archive is named .pt, like OpenAI's CLIP download."""
    root = tmp_path_factory.mktemp("payload")
    return payload_archive(root / "weights.pt", root / "MARKER"), root / "MARKER"


def test_the_payload_is_real(tmp_path):
    """torch.jit.load of the same kind of archive does write the marker (so the other tests mean something)."""
    marker = tmp_path / "jit-load-ran"
    torch.jit.load(str(payload_archive(tmp_path / "w.pt", marker)))
    assert marker.read_bytes() == b"AAAA"


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and not msg.rstrip().endswith(("False", ",", ":")), msg
    assert "weights_only set to False" not in msg and "Re-running" not in msg
    return msg


@pytest.mark.parametrize("loader", ["read_tensors", "load_checkpoint", "backbone", "load_weights_only"])
def test_loaders_never_run_torchscript(payload, loader):
    path, marker = payload
    from loftup.backbones import create_backbone

    call = {"read_tensors": read_tensors, "load_checkpoint": load_checkpoint, "load_weights_only": load_weights_only,
            "backbone": lambda p: create_backbone("dinov2_vits14", weights=p)}[loader]
    with pytest.raises(CheckpointError) as exc:
        call(path)
    msg = one_line(exc)
    assert str(path) in msg
    assert "__setstate__" in msg or "TorchScript" in msg
    assert not marker.exists()


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3, bias=False).half()
        self.b = nn.Linear(4, 3)
        self.b.weight = self.a.weight  # tied: one storage, two names
        self.v = nn.Parameter(torch.arange(20.0).view(4, 5)[1:, 2:].contiguous())
        self.register_buffer("count", torch.tensor(3))
        self.plain = torch.ones(2)  # an attribute, not a parameter or buffer: not in the state dict
        self.layers = nn.ModuleList([nn.BatchNorm1d(3), nn.Identity()])

    def forward(self, x):
        return self.a(x)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_plain_torchscript_weights_are_read_as_data(tmp_path, how):
    """Ordinary scripted/traced modules (OpenAI's CLIP archive is one) give exactly torch.jit.load's state dict."""
    module = _Plain()
    ts = torch.jit.script(module) if how == "script" else torch.jit.trace(module, torch.zeros(1, 4).half())
    ts.save(str(tmp_path / "m.pt"))
    sd, _ = read_tensors(tmp_path / "m.pt")
    ref = torch.jit.load(str(tmp_path / "m.pt")).state_dict()
    assert list(sd) == list(ref)
    assert all(sd[k].dtype == ref[k].dtype and torch.equal(sd[k], ref[k]) for k in ref)


def _archive(path: Path, data_pkl: bytes, code: str = "class M(Module):\n  __parameters__ = []\n") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data.pkl", data_pkl)
        z.writestr("m/constants.pkl", pickle.dumps(()))
        z.writestr("m/code/__torch__.py", code)
        z.writestr("m/version", "3")
    return path


class _Reduce:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


@pytest.mark.parametrize("case", ["reduce", "build-on-builtin", "global", "ext", "inst"])
def test_handmade_torchscript_pickles_are_refused(tmp_path, case):
    """data.pkl may only rebuild tensors and records: any other global, call or opcode is refused."""
    marker = tmp_path / "marker"
    data = {
        "reduce": pickle.dumps(_Reduce(marker), protocol=2),
        "build-on-builtin": b"\x80\x02]q\x00}q\x01X\x01\x00\x00\x00aK\x01sb.",  # BUILD on a list
        "global": b"\x80\x02cos\nsystem\nq\x00.",
        "ext": b"\x80\x02\x82\x01.",
        "inst": b"(X\x03\x00\x00\x00abcipathlib\nPath\n.",
    }[case]
    with pytest.raises(CheckpointError) as exc:
        read_tensors(_archive(tmp_path / "h.pt", data))
    one_line(exc)
    assert not marker.exists()


def test_pickle_reduce_payload_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(2), "x": _Reduce(marker)}, path)
    for call in (read_tensors, load_checkpoint, load_weights_only):
        with pytest.raises(CheckpointError, match="Python objects") as exc:
            call(path)
        msg = one_line(exc)
        assert "safetensors" in msg and "docs/security.md" in msg  # the Security section moved from the README (issue 25)
    assert not marker.exists()


# -- fuzz: damaged, truncated and renamed files ---------------------------------------------
@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    ckpt = save_checkpoint(LoftUp(LoftUpConfig(feat_dim=8)), root / "ours.safetensors")
    sd = {k: v.clone() for k, v in read_tensors(ckpt)[0].items()}
    torch.save(sd, root / "zip.bin")
    torch.save(sd, root / "legacy.pth", _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(root / "junk.zip", "w") as z:
        z.writestr("a/readme.txt", "no checkpoint in here")
    return {"safetensors": ckpt, "zip": root / "zip.bin", "legacy": root / "legacy.pth", "junkzip": root / "junk.zip"}


def _fuzz_cases(files, tmp_path):
    rng = random.Random(0)
    cases = {"empty": b"", "tiny": b"PK", "random": bytes(rng.getrandbits(8) for _ in range(4096)),
             "onnx-like": b"\x08\x07\x12\x07pytorch" + bytes(100), "text": b"hello\n" * 50}
    for kind in ("safetensors", "zip", "legacy"):
        data = files[kind].read_bytes()
        for frac in (0.1, 0.5, 0.9, 0.99):
            cases[f"{kind}-cut-{frac}"] = data[: int(len(data) * frac)]
        flipped = bytearray(data)
        for i in rng.sample(range(64, len(data)), 20):
            flipped[i] ^= 0xFF
        cases[f"{kind}-flipped"] = bytes(flipped)
    cases["junk-zip"] = files["junkzip"].read_bytes()
    out = []
    for name, data in cases.items():
        for suffix in (".safetensors", ".bin", ".pt"):
            p = tmp_path / f"{name}{suffix}"
            p.write_bytes(data)
            out.append(p)
    return out


def test_fuzzed_files_give_one_checkpoint_error_line(tmp_path, good_files):
    failures = []
    for path in _fuzz_cases(good_files, tmp_path):
        for call in (read_tensors, load_checkpoint):
            try:
                call(path)
            except CheckpointError as e:
                if "\n" in str(e) or str(path) not in str(e):
                    failures.append(f"{path.name} via {call.__name__}: {e!r}")
            except Exception as e:  # noqa: BLE001 - the point of the test
                failures.append(f"{path.name} via {call.__name__}: {type(e).__name__}: {e}")
            # flipped bytes inside tensor data can still load: those are valid files of other numbers
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy"])
@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pt", ".ckpt"])
def test_renamed_files_are_read_by_content(tmp_path, good_files, kind, suffix):
    """A .safetensors that is a pickle or a .bin that is a safetensors loads the same tensors."""
    renamed = tmp_path / f"renamed{suffix}"
    renamed.write_bytes(good_files[kind].read_bytes())
    sd, ref = read_tensors(renamed)[0], read_tensors(good_files["safetensors"])[0]
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert isinstance(load_checkpoint(renamed), LoftUp)


def test_non_checkpoint_formats_are_named(tmp_path, good_files):
    junk = tmp_path / "model.pt"
    junk.write_bytes(good_files["junkzip"].read_bytes())
    with pytest.raises(CheckpointError, match="zip archive that is not a PyTorch checkpoint"):
        read_tensors(junk)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good_files["safetensors"].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated safetensors"):
        read_tensors(cut)
    state = tmp_path / "step.state.pt"
    save_file({"x": torch.zeros(1)}, str(state))
    with pytest.raises(CheckpointError, match="is a safetensors, not a torch.save file"):
        load_weights_only(state, "training state")


# -- every CLI verb that takes a checkpoint or weights ----------------------------------------
@pytest.fixture(scope="module")
def verb_inputs(tmp_path_factory):
    """Small inputs each verb needs to get as far as reading its checkpoint."""
    import numpy as np
    from eval_fixtures import write_cocostuff  # also registers the tiny_conv backbone
    from PIL import Image

    root = tmp_path_factory.mktemp("verbs")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    torch.manual_seed(0)
    tiny = save_checkpoint(LoftUp(LoftUpConfig(feat_dim=16, backbone="tiny_conv")).eval(), root / "tiny16.safetensors")
    return {"photos": photos, "coco": write_cocostuff(root / "coco"), "tiny": tiny}


UPSAMPLE = ["upsample", "sample:astronaut", "--backbone", "dinov2_vits14", "--size", "56", "--input-size", "28"]
TRAIN = ["train", "--backbone", "dinov2_vits14", "--backbone-weights", "random", "--size", "28", "--batch-size", "2",
         "--steps", "1", "--num-workers", "0", "--no-progress"]
EVAL = ["eval", "--probe", "seg", "--backbone", "tiny_conv", "--size", "32", "--epochs", "1", "--batch-size", "4"]
VERBS = {
    "upsample --checkpoint": lambda p, d, out: UPSAMPLE + ["--weights", "random", "--checkpoint", p, "--out", out],
    "upsample --weights": lambda p, d, out: UPSAMPLE + ["--weights", p, "--random-init", "--out", out],
    "export --checkpoint": lambda p, d, out: ["export", "--checkpoint", p, "--scope", "upsampler", "--out", out / "m.onnx"],
    "bench --checkpoint": lambda p, d, out: ["bench", "--checkpoint", p, "--sizes", "28", "--backends", "torch-sdpa",
                                            "--repeats", "1", "--out", out],
    "train --init (stage 1)": lambda p, d, out: TRAIN + ["--stage", "1", "--data", d["photos"], "--out", out, "--init", p],
    "train --init (stage 2)": lambda p, d, out: TRAIN + ["--stage", "2", "--data", d["photos"], "--out", out, "--init", p],
    "eval --engine": lambda p, d, out: EVAL + ["--engine", p, "--data", d["coco"], "--out", out],
    "eval --reference": lambda p, d, out: EVAL + ["--engine", d["tiny"], "--reference", p, "--data", d["coco"], "--out", out],
}


@pytest.mark.parametrize("verb", list(VERBS))
def test_cli_verbs_never_run_torchscript(tmp_path, capsys, verb_inputs, verb):
    path = payload_archive(tmp_path / "ViT-B-16.pt", tmp_path / "MARKER")
    code, _, err = run(VERBS[verb](path, verb_inputs, tmp_path / "out"), capsys)
    assert_one_line_error(code, err, str(path), only_line=False)
    assert "__setstate__" in err
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("verb", ["upsample --checkpoint", "upsample --weights", "export --checkpoint", "train --init (stage 2)"])
def test_cli_verbs_on_damaged_files(tmp_path, capsys, verb_inputs, good_files, verb):
    """Random bytes, a truncated file, a renamed junk zip: one `error:` line naming the file, no traceback."""
    data = good_files["safetensors"].read_bytes()
    bad = {"random.pt": random.Random(1).randbytes(3000), "cut.safetensors": data[: len(data) // 3],
           "junk.pt": good_files["junkzip"].read_bytes(), "cut.bin": good_files["zip"].read_bytes()[:2000]}
    for name, content in bad.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, _, err = run(VERBS[verb](path, verb_inputs, tmp_path / "out"), capsys)
        assert_one_line_error(code, err, str(path), only_line=False)


def test_load_weights_only_allows_only_the_named_classes(tmp_path):
    import argparse

    path = tmp_path / "radio.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(model="vit_base")}, path)
    with pytest.raises(CheckpointError, match=r"argparse.Namespace\); loftup never unpickles code"):
        load_weights_only(path)
    obj = load_weights_only(path, allow=[argparse.Namespace])
    assert obj["args"].model == "vit_base" and torch.equal(obj["state_dict"]["w"], torch.ones(2))


def test_torchscript_tensor_views_are_bounded(tmp_path):
    """A tensor may not claim more elements than its storage holds (stride-0 memory bombs, out-of-range views)."""
    from loftup.io import torchscript

    storage = torch.arange(4.0)
    with pytest.raises(pickle.UnpicklingError, match="overlaps itself"):
        torchscript._rebuild_tensor(storage, 0, (10**6, 10**6), (0, 0))
    with pytest.raises(RuntimeError, match="out of bounds"):
        torchscript._rebuild_tensor(storage, 2, (2, 2), (2, 1))
    assert torch.equal(torchscript._rebuild_tensor(storage, 1, (3,), (1,)), torch.tensor([1.0, 2.0, 3.0]))
