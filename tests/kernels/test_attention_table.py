"""`auto`'s choice per (device, GPU architecture, dtype, shape, mode) from the measured table.

No GPU here: a `torch.device("cuda")` object and a mocked architecture are enough, because the
choice reads only the device type, the call's dtype / head dim / sizes / gradient and the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loftup.kernels import attention_table as at
from loftup.kernels import resolve_backend
from loftup.kernels.attention_table import (
    CLASS_HEAD_DIMS,
    CLASS_SHAPES,
    RESULTS_H200,
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
REPO = Path(__file__).resolve().parents[2]


def measured(results: str) -> dict[str, dict[str, float]]:
    """{table key: {name: ms}} of every attention measurement in a committed results file, the key
    worked out from the row's own dtype, head dim (padded to a multiple of 8 as the dispatcher
    does), queries, keys and mode - not from the table under test."""
    data = json.loads((REPO / results).read_text())
    arch, out = data["device"]["arch"], {}
    for section in ("attention", "fp32_backends"):
        for row in data[section]["rows"]:
            d_pad = -(-row["head_dim"] // 8) * 8
            for mode in ("fwd", "train"):
                if mode in row:
                    out[table_key(arch, row["dtype"], d_pad, row["queries"], row["keys"], mode == "train")] = row[mode]
    return out


def fastest_backend(key: str, ms: dict[str, float]) -> str:
    """The backend a measurement says auto must run: the fastest name ('sdpa-chunked ...' is sdpa),
    never triton for fp32 (IEEE-fp32 MMAs)."""
    names = {name.split(" ")[0].split("-")[0]: t for name, t in ms.items()}
    if "/fp32/" in key:
        names.pop("triton", None)
    return min(names, key=names.get)


H200 = measured(RESULTS_H200)


def shape_of(key: str) -> tuple:
    """The (arch, dtype, padded head dim, N, M, grad) of a call that falls under `key`."""
    arch, dt, hc, sc, mode = key.split("/")
    n, m = CLASS_SHAPES[sc]
    return arch, DTYPES[dt], CLASS_HEAD_DIMS[hc], n, m, mode == "train"


@pytest.fixture(autouse=True)
def triton_present(monkeypatch):
    from loftup import kernels

    monkeypatch.setattr(kernels, "triton_importable", lambda: True)


def test_the_h200_results_file_holds_the_nine_measured_keys():
    assert len(H200) == 9 and all(k.startswith("sm90/") for k in H200)
    assert {fastest_backend(k, ms) for k, ms in H200.items()} == {"flash", "triton", "sdpa"}


@pytest.mark.parametrize("key", all_keys())
def test_auto_on_cuda_uses_the_table(key):
    # what the committed H200 measurement says is fastest; unmeasured keys: sdpa (PyTorch's fused kernels)
    want = fastest_backend(key, H200[key]) if key in H200 else "sdpa"
    got = resolve_backend("auto", CUDA, shape_of(key), AttentionTable())
    assert got == want
    if "/fp32/" in key:
        assert got != "triton"  # never the IEEE-fp32 Triton path


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
@pytest.mark.parametrize("n,m", list(CLASS_SHAPES.values()))
def test_auto_on_cpu_is_always_sdpa(dtype, n, m):
    assert resolve_backend("auto", CPU, ("sm90", dtype, 104, n, m, True), AttentionTable()) == "sdpa"


def test_shipped_entries_name_the_results_file_that_holds_their_figures():
    for key, entry in SHIPPED.items():
        assert entry.measured and entry.results, key
        assert (REPO / entry.results).is_file(), entry.results
        assert measured(entry.results)[key] == entry.ms, key  # the file holds exactly these figures
        assert min(entry.ms, key=entry.ms.get).startswith(entry.backend), key  # the fastest measured one
    assert set(SHIPPED) == set(H200)  # and every measurement in the file has its entry


def test_unmeasured_keys_say_so():
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
