"""`loftup bench` on CPU with small models: every field in the JSON, skipped backends with reasons,
a PNG plot, and the analytic FLOP formula against torch's FlopCounterMode."""

from __future__ import annotations

import copy
import json
import statistics

import pytest
from export_helpers import counted_macs

from loftup.cli import main

pytestmark = pytest.mark.export

ROW_FIELDS = {"backend", "precision", "batch", "size", "lr_size", "status", "engine", "warmup", "repeats", "latency_ms",
              "throughput", "memory", "work", "parity", "ratio_to_torch_reference"}


@pytest.mark.parametrize("size", [224, 448, 896])
def test_flop_formula_matches_torchs_flop_counter(size):
    """The analytic count against torch's FlopCounterMode on the real-size (C=384) LoftUp, untiled
    (tiles recompute a halo). Both count matmuls and convs only, so they agree exactly; at 224 px
    that is 203.34 GMAC."""
    from loftup.bench.flops import upsampler_macs
    from loftup.model import LoftUp, LoftUpConfig

    cfg = LoftUpConfig(feat_dim=384)
    h = size // 14
    counted = counted_macs(LoftUp(cfg), (1, 384, h, h), (1, 3, size, size), tile=False)
    assert upsampler_macs(cfg, 1, size, size, h, h)["total"] == pytest.approx(counted, rel=1e-9)
    assert upsampler_macs(cfg, 2, size, size, h, h)["total"] == pytest.approx(2 * counted, rel=1e-9)


def _tiny_spec():
    import dataclasses

    from loftup.backbones import get_spec

    return dataclasses.replace(get_spec("dinov2_vits14"), name="dinov2_tiny", embed_dim=32)


def test_bench_writes_every_field_and_skips_with_reasons(tmp_path, capsys, model, monkeypatch):
    import loftup.export.onnx as onnx_export
    from loftup.bench.harness import BenchOptions, run_bench

    traces, trace = [], onnx_export.export_onnx
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: traces.append(k["precision"]) or trace(*a, **k))

    opts = BenchOptions(sizes=[28, 42], batch_sizes=[1, 2], precisions=["fp32", "bf16", "int8"],
                        backends=["torch-reference", "torch-sdpa", "onnxruntime", "triton", "tensorrt"],
                        repeats=3, max_seconds=5, threads=2, out=tmp_path / "bench.json", progress=False)
    report = run_bench(opts, model=model, backbone_spec=_tiny_spec())
    captured = capsys.readouterr()
    data = json.loads(report.json_path.read_text())
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"environment", "model", "flop_formula", "gemm_peak_gflops", "gemm_peak_gflops_after", "rows", "tolerances",
            "parity_reference"} <= set(data)
    assert data["gemm_peak_gflops"]["fp32"] > 1 and data["gemm_peak_gflops"]["bf16"] > 1 and data["gemm_peak_gflops"]["int8"] > 1
    assert len(data["environment"]["load_average_start"]) == 3
    assert data["model"]["feat_dim"] == 32 and data["environment"]["torch_threads"] == 2
    rows = data["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    gflop = {(s, b): 2 * counted_macs(copy.deepcopy(model), (b, 32, s // 14, s // 14), (b, 3, s, s), tile=False) / 1e9
             for s in (28, 42) for b in (1, 2)}
    done = {(r["backend"], r["precision"]) for r in ok}
    assert done == {("torch-reference", "fp32"), ("torch-reference", "bf16"), ("torch-sdpa", "fp32"), ("torch-sdpa", "bf16"),
                    ("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "int8")}
    assert len(ok) == 6 * 2 * 2  # six (backend, precision) pairs x two sizes x two batch sizes
    assert "onnx int8" in data["tolerances"]
    assert traces == ["fp32"]  # the ONNX Runtime int8 engine is quantized from the fp32 row's trace
    for r in ok:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        lat = r["latency_ms"]
        # the summary is the one of the recorded runs (no wall-clock expectation)
        assert len(lat["all"]) == r["repeats"] >= 1 and lat["min"] == min(lat["all"]) > 0
        assert lat["median"] == pytest.approx(statistics.median(lat["all"])) and lat["median"] <= lat["p90"] <= max(lat["all"])
        assert r["throughput"]["images_per_s"] == pytest.approx(r["batch"] * 1e3 / lat["median"])
        assert r["memory"]["peak_mb"] > 50 and "RSS" in r["memory"]["method"]
        w = r["work"]
        assert w["gflop"] == pytest.approx(gflop[r["size"], r["batch"]], rel=1e-9)  # torch's FlopCounterMode on the model
        assert w["achieved_gflops"] == pytest.approx(w["gflop"] / lat["median"] * 1e3)
        assert w["fraction_of_peak"] == pytest.approx(w["achieved_gflops"] / data["gemm_peak_gflops"][r["precision"]])
        assert r["parity"]["passed"], r
        assert r["ratio_to_torch_reference"] is not None
    skipped = {(r["backend"], r["precision"]): r["reason"] for r in rows if r["status"] == "skipped"}
    assert "NVIDIA GPU" in skipped[("triton", "fp32")] and "NVIDIA GPU" in skipped[("tensorrt", "fp32")]
    assert "bf16" in skipped[("onnxruntime-cpu", "bf16")]
    assert "does not run int8" in skipped[("torch-sdpa", "int8")] and ("triton", "int8") in skipped
    assert ("onnxruntime-cuda", "fp32") in skipped and ("onnxruntime-tensorrt", "fp32") in skipped
    assert all(reason for reason in skipped.values())
    assert not [r for r in rows if r["status"] == "failed"]
    assert "median ms" in captured.err and "skipped triton" in captured.err  # the table and the reasons


def test_bench_row_fails_parity_when_the_engine_output_is_perturbed(tmp_path, model, monkeypatch):
    """The failing twin of the rows above: the row's own output, moved by 0.1, fails parity."""
    from loftup.bench import harness
    from loftup.bench.harness import BenchOptions, run_bench

    real = harness.time_engine

    def perturbed(*args, **kwargs):
        times, out, mem = real(*args, **kwargs)
        return times, out + 0.1, mem

    monkeypatch.setattr(harness, "time_engine", perturbed)
    report = run_bench(BenchOptions(sizes=[28], precisions=["fp32"], backends=["torch-sdpa"], warmup=0, repeats=1,
                                    out=tmp_path, progress=False, plot=False), model=model, backbone_spec=_tiny_spec())
    (row,) = report.rows
    assert row["status"] == "ok" and row["parity"]["passed"] is False
    assert row["parity"]["max_abs"] == pytest.approx(0.1, abs=2e-2)


def test_bench_cli(tmp_path, capsys):
    """The verb end to end, at a size where the real-size (C=384) upsampler is quick."""
    code = main(["bench", "--random-init", "--sizes", "28", "--precisions", "fp32", "--backends", "torch-sdpa,tensorrt",
                 "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (json_file,) = tmp_path.glob("bench-*.json")  # named after the machine, timm-style
    assert json_file.with_suffix(".png").is_file()
    rows = json.loads(json_file.read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "skipped"] and rows[0]["lr_size"] == 2
    assert "wrote" in captured.out and "median ms" in captured.err


def test_bench_bad_arguments(capsys):
    assert main(["bench", "--random-init", "--backends", "onnxruntme"]) == 2
    assert "did you mean 'onnxruntime'" in capsys.readouterr().err
    assert main(["bench", "--random-init", "--sizes", "224,abc"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["bench", "--sizes", "224", "--backbone", "dinov2_vitb14"]) == 2  # no checkpoint ships for it
    assert "--random-init" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_torch_compile_runs(tmp_path, model):
    """torch.compile's first call compiles for ~a minute on 2 cores: slow marker."""
    from loftup.bench.harness import BenchOptions, run_bench

    report = run_bench(BenchOptions(sizes=[28], precisions=["fp32"], backends=["torch-compile"], repeats=2, out=tmp_path,
                                    progress=False), model=model, backbone_spec=_tiny_spec())
    (row,) = report.rows
    assert row["status"] == "ok" and row["parity"]["passed"]
