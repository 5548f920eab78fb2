"""`loftup bench --profile` (measured here, on CPU), the GPU path of the stage table (fake events),
`bench --attention`'s measuring loop with fake checks and timers, and the CPU refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from loftup.bench.attention import measure_attention_table, size_class_of
from loftup.bench.profile import profile_forward, summarize
from loftup.cli import main
from loftup.kernels import resolve_backend
from loftup.kernels.attention_table import CANDIDATES, AttentionTable
from loftup.runtime.profiling import STAGES


def test_bench_profile_on_cpu(tmp_path, capsys):
    code = main(["bench", "--random-init", "--sizes", "28", "--precisions", "fp32", "--backends", "torch-sdpa,torch-auto",
                 "--warmup", "0", "--repeats", "1", "--profile", "--out", str(tmp_path / "b.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["torch-sdpa", "torch-auto"]
    for r in rows:
        prof = r["profile"]
        names = [s["stage"] for s in prof["stages"]]
        assert names == [*STAGES, "other (not in a stage)"]  # every stage of LoftUp shows up, in data-path order
        assert prof["basis"] == "cpu" and prof["total_ms"] > 0
        assert sum(s["share"] for s in prof["stages"]) == pytest.approx(1.0, abs=0.02)
        calls = {s["stage"]: s["calls_per_forward"] for s in prof["stages"]}
        assert calls["attention"] == 2 and calls["ffn"] == 2 and calls["convs"] == 1  # two blocks
        assert all(s["device_ms"] is None for s in prof["stages"])
    assert "per forward, CPU time" in captured.err and "fourier features" in captured.err


def test_stage_markers_cost_nothing_when_off():
    from loftup.runtime import profiling

    assert profiling.stage("convs") is profiling.stage("attention")  # one shared no-op context


def test_profile_of_a_plain_function_has_only_other():
    prof = profile_forward(lambda x: x @ x, (torch.randn(64, 64),), "cpu", iters=2)
    assert [s["stage"] for s in prof["stages"]] == ["other (not in a stage)"]


def _event(name, cpu_us, device_us, device_type="DeviceType.CPU"):
    return SimpleNamespace(name=name, cpu_time_total=cpu_us, device_time_total=device_us, device_type=device_type)


def test_gpu_stage_table_uses_kernel_time_and_skips_gpu_annotations():
    events = [
        _event("loftup::forward", 900.0, 5000.0), _event("loftup::forward", 900.0, 5000.0),
        _event("loftup::attention", 100.0, 1000.0), _event("loftup::attention", 100.0, 1200.0),
        _event("loftup::convs", 50.0, 2000.0),
        _event("loftup::convs", 0.0, 2000.0, device_type="DeviceType.CUDA"),  # GPU-side copy of the range
        _event("aten::mm", 10.0, 500.0),
    ]
    prof = summarize(events, iters=2, cuda=True)
    rows = {r["stage"]: r for r in prof["stages"]}
    assert prof["basis"] == "device" and prof["total_ms"] == pytest.approx(5.0)
    assert rows["attention"]["device_ms"] == pytest.approx(1.1) and rows["attention"]["calls_per_forward"] == 1
    assert rows["convs"]["device_ms"] == pytest.approx(1.0)
    assert rows["other (not in a stage)"]["device_ms"] == pytest.approx(5.0 - 2.1)
    assert rows["attention"]["share"] == pytest.approx(1.1 / 5.0)


def test_gpu_only_options_are_refused_on_cpu(capsys):
    assert main(["bench", "--random-init", "--sizes", "28", "--cuda-graphs"]) == 2
    assert "--cuda-graphs needs --device cuda" in capsys.readouterr().err
    assert main(["bench", "--random-init", "--attention"]) == 2
    assert "bench --attention measures GPU attention kernels" in capsys.readouterr().err


def test_size_classes_of_output_sides():
    assert [size_class_of(s) for s in (112, 224, 300, 448, 600, 896, 2048)] == ["224", "224", "224", "448", "448", "896", "896"]


def test_attention_measurement_writes_the_local_table(tmp_path, monkeypatch):
    monkeypatch.setenv("LOFTUP_CACHE", str(tmp_path))
    ms = {"triton": 1.0, "triton_v2": 1.5, "flash": 2.0, "efficient": 3.0, "cudnn": 0.5, "sdpa": 2.5}
    checked = []

    def check(name, dt, hc, m, grad, device):
        checked.append((name, dt))
        if name == "efficient" and dt == "bf16":
            raise RuntimeError("No available kernel")
        return {"correct": name != "cudnn" or grad, "max_abs": [0.0], "torch_max_abs": [0.0]}  # cudnn wrong in fwd

    def timer(name, dt, sc, hc, grad, device, budget_ms):
        return ms[name]

    record = measure_attention_table("cpu", precisions=("bf16", "fp32"), size_classes=("448",), head_classes=("d128",),
                                     arch="sm90", check=check, timer=timer, device_name="fake GPU")
    chosen = {r["key"]: r["chosen"] for r in record["results"]}
    assert chosen == {"sm90/bf16/d128/448/fwd": "triton", "sm90/bf16/d128/448/train": "cudnn",
                      "sm90/fp32/d128/448/fwd": "flash", "sm90/fp32/d128/448/train": "cudnn"}
    assert ("triton", "fp32") not in checked and ("triton_v2", "fp32") not in checked  # never measured, never chosen
    statuses = record["results"][0]["candidates"]
    assert statuses["efficient"]["status"].startswith("unsupported: RuntimeError") and statuses["cudnn"]["status"] == "incorrect"
    table = AttentionTable.load()
    assert record["table_path"] == str(tmp_path / "attention-table.json")
    shape = ("sm90", torch.bfloat16, 104, 448 * 448, 1024, True)
    assert resolve_backend("auto", torch.device("cuda"), shape, table) == "cudnn"  # the local table wins
    assert set(json.loads((tmp_path / "attention-table.json").read_text())["entries"]) == set(chosen)
    assert set(CANDIDATES) == {"triton", "triton_v2", "flash", "efficient", "cudnn", "sdpa"}
