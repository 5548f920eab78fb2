"""benchmarks/gpu_suite.py in its CPU mode (Triton interpreter, tiny shapes): every section runs
and writes its JSON, so the script that a lent GPU runs in one call cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite_module():
    spec = importlib.util.spec_from_file_location("loftup_gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_suite_cpu_mode_writes_every_section(suite_module, tmp_path):
    written = suite_module.main(["--device", "cpu", "--out", str(tmp_path)])
    assert set(written) == set(suite_module.SECTIONS)
    data = {name: json.loads(path.read_text()) for name, path in written.items()}
    assert all(path.parent == tmp_path / suite_module.device_slug("cpu") for path in written.values())
    assert {d["status"] for name, d in data.items() if name != "attention_table"} == {"ok"}, {
        n: d.get("error") for n, d in data.items()}
    assert data["attention_table"]["status"] == "skipped"  # CUDA only; its loop is tested in tests/bench

    rows = data["correctness"]["rows"] + data["correctness_fp32"]["rows"]
    triton = [r for r in rows if r["backend"] == "triton"]
    assert triton and all(r["passed"] and r["backward_bitwise_repeatable"] for r in triton)
    assert {r["d"] for r in triton} == {101, 133, 197}
    assert all(r["passed"] for r in rows if r["backend"] == "sdpa")

    e2e = [r for r in data["e2e"]["rows"] if r["status"] == "ok"]
    assert {r["variant"] for r in e2e} == {"before", "after", "after+compile"}
    assert all(r["parity_vs_fp32_sdpa"]["passed"] and r["median_ms"] > 0 for r in e2e)
    assert {r["reason"] for r in data["e2e"]["rows"] if r["status"] == "skipped"} == {"CUDA graphs need CUDA"}

    profile = data["profile"]["after"]
    assert profile["basis"] == "cpu" and {"attention", "convs", "ffn"} <= {s["stage"] for s in profile["stages"]}
    assert data["train"]["steps"] == 2 and data["train"]["grads_finite"]
    assert data["triton_resources"]["launched"]


def test_gpu_suite_refuses_cuda_without_a_gpu(suite_module, tmp_path, capsys):
    with pytest.raises(SystemExit):
        suite_module.main(["--out", str(tmp_path)])
    assert "no CUDA device here" in capsys.readouterr().err
