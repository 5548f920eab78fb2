"""`auto`'s choice per (device, GPU architecture, dtype, shape, mode) from the measured table.

No GPU here: a `torch.device("cuda")` object and a mocked architecture are enough, because the
choice reads only the device type, the call's dtype / head dim / sizes / gradient and the table.
"""

from __future__ import annotations

import json

import pytest
import torch

from loftup.kernels import attention_table as at
from loftup.kernels import resolve_backend
from loftup.kernels.attention_table import (
    CLASS_HEAD_DIMS,
    CLASS_SHAPES,
    SHIPPED,
    AttentionTable,
    TableEntry,
    all_keys,
    choose_fastest,
    size_class,
    table_key,
    write_local_table,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The H200 measurements (gpu-findings.md), restated: what auto must pick on sm90.
SM90_MEASURED = {
    "sm90/bf16/d128/224/fwd": "flash", "sm90/bf16/d128/224/train": "triton",
    "sm90/bf16/d128/448/fwd": "flash", "sm90/bf16/d128/448/train": "triton",
    "sm90/bf16/d128/896/fwd": "flash", "sm90/bf16/d128/896/train": "flash",
    "sm90/bf16/d256/448/fwd": "flash", "sm90/bf16/d256/448/train": "flash",
    "sm90/fp32/d128/896/fwd": "sdpa",
}


def shape_of(key: str) -> tuple:
    """The (arch, dtype, padded head dim, N, M, grad) of a call that falls under `key`."""
    arch, dt, hc, sc, mode = key.split("/")
    n, m = CLASS_SHAPES[sc]
    return arch, DTYPES[dt], CLASS_HEAD_DIMS[hc], n, m, mode == "train"


@pytest.fixture(autouse=True)
def triton_present(monkeypatch):
    from loftup import kernels

    monkeypatch.setattr(kernels, "triton_importable", lambda: True)


@pytest.mark.parametrize("key", all_keys())
def test_auto_on_cuda_uses_the_table(key):
    want = SM90_MEASURED.get(key, "sdpa")  # unmeasured keys: sdpa (PyTorch's fused kernels)
    got = resolve_backend("auto", CUDA, shape_of(key), AttentionTable())
    assert got == want
    if "/fp32/" in key:
        assert got != "triton"  # never the IEEE-fp32 Triton path


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
@pytest.mark.parametrize("n,m", list(CLASS_SHAPES.values()))
def test_auto_on_cpu_is_always_sdpa(dtype, n, m):
    assert resolve_backend("auto", CPU, ("sm90", dtype, 104, n, m, True), AttentionTable()) == "sdpa"


def test_shipped_table_cites_measurements_and_marks_the_rest_unmeasured():
    assert set(SHIPPED) == set(SM90_MEASURED)
    for key, entry in SHIPPED.items():
        assert entry.measured and "gpu-findings.md" in entry.source, key
        assert min(entry.ms, key=entry.ms.get).startswith(entry.backend), key  # the fastest measured one
    rows = AttentionTable().describe()
    assert len(rows) == len(all_keys()) == 2 * 3 * 2 * 3 * 2
    assert sum(r["measured"] for r in rows) == len(SHIPPED)
    assert all(r["backend"] == "sdpa" and r["origin"] == "default" for r in rows if not r["measured"])


def test_size_classes_cover_tiles_and_loftup_outputs():
    assert size_class(224 * 224, 256) == "224"
    assert size_class(448 * 448, 1024) == "448"
    assert size_class(256 * 256, 4096) == "448"  # one 256x256 tile of an 896 output
    assert size_class(896 * 896, 4096) == "896"
    assert table_key("sm90", torch.bfloat16, 200, 448 * 448, 1024, False) == "sm90/bf16/d256/448/fwd"


def test_local_table_overrides_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LOFTUP_CACHE", str(tmp_path))
    key = "sm90/bf16/d128/448/fwd"
    path = write_local_table({key: TableEntry("cudnn", {"cudnn": 1.2, "flash": 1.6}, "test"),
                              "sm90/fp32/d128/448/fwd": TableEntry("triton", {"triton": 1.0}, "test")},
                             device_name="NVIDIA H200")
    assert path == tmp_path / "attention-table.json"
    table = AttentionTable.load()
    assert resolve_backend("auto", CUDA, shape_of(key), table) == "cudnn"
    assert resolve_backend("auto", CUDA, shape_of("sm90/fp32/d128/448/fwd"), table) == "sdpa"  # fp32: never triton
    assert resolve_backend("auto", CUDA, shape_of("sm90/bf16/d128/448/train"), table) == "triton"  # shipped
    assert {r["origin"] for r in table.describe() if r["key"] == key} == {"local"}
    # a second measurement merges into the file
    write_local_table({"sm80/bf16/d128/224/fwd": TableEntry("efficient", {}, "test")})
    assert set(json.loads(path.read_text())["entries"]) == {key, "sm90/fp32/d128/448/fwd", "sm80/bf16/d128/224/fwd"}


def test_damaged_local_table_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "attention-table.json"
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring the local attention table"):
        table = AttentionTable.load(path)
    assert table.local == {}


def test_choose_fastest_counts_only_correct_runs():
    results = {"triton": {"ms": 0.5, "correct": True}, "flash": {"ms": 0.4, "correct": False},
               "efficient": {"ms": 0.9, "correct": True}, "cudnn": {"ms": None, "correct": False}}
    assert choose_fastest("sm90/bf16/d128/224/fwd", results, "t").backend == "triton"
    assert choose_fastest("sm90/fp32/d128/224/fwd", results, "t").backend == "efficient"
    assert choose_fastest("sm90/bf16/d128/224/fwd", {"flash": {"ms": None}}, "t") is None


def test_arch_name_from_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert at.arch_of(CUDA) == "sm80"
