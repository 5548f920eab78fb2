"""benchmarks/attention_v2.py, the one-call GPU benchmark of issue 13, in its --cpu-smoke mode
(Triton interpreter, tiny shapes, fp16): every section runs and writes the JSON and the markdown,
so the script a lent GPU runs cannot rot unnoticed. Its numbers here are not speeds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_v2.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("loftup_attention_v2_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def smoke(bench, tmp_path_factory):
    from loftup.kernels import triton_attention as v1

    if not v1._interpreted():
        pytest.skip("needs TRITON_INTERPRET=1 before triton import")
    out = tmp_path_factory.mktemp("attention_v2")
    written = bench.main(["--cpu-smoke", "--out", str(out)])
    return written, json.loads(written["json"].read_text()), written["markdown"].read_text()


def test_every_section_runs_and_is_written(bench, smoke):
    written, doc, _ = smoke
    assert set(doc["sections"]) == set(bench.SECTIONS)
    assert {name: s["status"] for name, s in doc["sections"].items()} == {name: "ok" for name in bench.SECTIONS}
    assert written["json"].parent.name == doc["device"] == bench._device_slug("cpu")
    assert doc["sections"]["environment"]["interpreter"] is True


def test_correctness_rows_pass_and_backwards_repeat_bitwise(bench, smoke):
    rows = smoke[1]["sections"]["correctness"]["rows"]
    checks = smoke[1]["sections"]["variants"]["checks"]
    ours = [r for r in rows + checks if r["method"] in bench.TRITON_METHODS]
    assert {(r["method"], r["d"]) for r in ours} == {(m, d) for m in ("v1", "v2") for d in (101, 197)} | {
        (m, bench.SMOKE_PLAN.cases[1].d) for m in bench.VARIANTS}
    assert all(r["status"] == "ok" and r["passed"] and r["backward_bitwise_repeatable"] for r in ours), ours
    assert all(r["max_abs"][k] <= 2 * r["torch_max_abs"][k] + 2e-4 for r in ours for k in ("out", "dq", "dk", "dv"))
    assert {r["status"] for r in rows if r["method"] == "cudnn"} == {"unsupported"}  # a CUDA-only kernel on CPU


def test_timing_rows_cover_every_case_method_and_mode(bench, smoke):
    rows = smoke[1]["sections"]["timing"]["rows"]
    got = {(r["method"], r["case"], r["mode"]) for r in rows}
    assert got == {(m, c.label, mode) for m in bench.METHODS for c in bench.SMOKE_CASES for mode in bench.MODES}
    ours = [r for r in rows if r["method"] in ("v1", "v2")]
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["d_run"] % 8 == 0 and not r["unlaunchable"] for r in ours)
    variants = smoke[1]["sections"]["variants"]["rows"]
    assert {r["method"] for r in variants if r["status"] == "ok"} == set(bench.VARIANTS)


def test_sweep_launches_exactly_the_configs_asked(bench, smoke):
    rows = smoke[1]["sections"]["sweep"]["rows"]
    plan = bench.SMOKE_PLAN
    assert [r["config"] for r in rows] == [*plan.fwd_sweep, *plan.bwd_sweep]
    assert all(r["launched"] and r["status"] == "ok" for r in rows)


def test_resources_list_the_v2_kernels(smoke):
    launched = smoke[1]["sections"]["resources"]["launched"]
    assert {"v2_fwd", "v2_fwd_ws", "v2_bwd", "fwd", "dq", "dkdv"} <= {r["kernel"] for r in launched}
    assert all(r["estimate_smem_bytes"] > 0 for r in launched)
    # The interpreter compiles nothing, so Triton's registers / spills / shared memory are only
    # known on a GPU; the markdown then prints None rather than failing.
    assert all(r.get("triton_regs") is None for r in launched)


def test_markdown_has_the_issue_table(bench, smoke):
    md = smoke[2]
    assert "| shape | dtype | " + " | ".join(f"{m} fwd" for m in bench.METHODS) + " | " in md
    for case in bench.SMOKE_CASES:
        assert f"| {case.label} | fp16 |" in md
    assert "| kernel | key | config | registers | spills | shared memory (B) |" in md
    assert "not a speed" in md


def test_goal_verdicts(bench):
    case448, case197 = bench.CASES[1], bench.CASES[3]
    rows = [{"method": m, "case": c.label, "dtype": "bf16", "mode": mode, "status": "ok", "ms": ms, "tflops": 1.0}
            for m, c, mode, ms in [("v2", case448, "fwd", 1.1), ("v2", case448, "fwd+bwd", 7.0),
                                   ("v2", case197, "fwd", 3.0), ("flash", case197, "fwd", 3.5),
                                   ("v2", case197, "fwd+bwd", 30.0), ("flash", case197, "fwd+bwd", 24.0)]]
    doc = {"sections": {"timing": {"rows": rows}}, "device": "gpu"}
    md = bench.markdown(doc, bench.GPU_PLAN)
    line448 = next(line for line in md.splitlines() if line.startswith(f"| {case448.label} | bf16"))
    line197 = next(line for line in md.splitlines() if line.startswith(f"| {case197.label} | bf16"))
    assert line448.endswith("| 1.2 / 6.0 | yes / no |")  # 1.1 <= 1.2 ms; 7.0 > 6 ms
    assert line197.endswith("| flash / flash | yes / no |")  # faster than flash forward only
    assert "| ? / ? |" in md  # unmeasured rows say so


def test_only_config_restores_the_launcher(bench):
    from loftup.kernels import triton_attention as v1

    before = (dict(v1.TUNING_SPACE), dict(v1._WORKING), set(v1._UNLAUNCHABLE), dict(v1._INTERPRETER_CONFIG))
    with bench.only_config(("v2_bwd",), "32x32/w4/s1") as cfg:
        assert v1.TUNING_SPACE["v2_bwd"] == (cfg,) and v1._INTERPRETER_CONFIG["BLOCK_N"] == 32
        v1._UNLAUNCHABLE.add(("v2_bwd", "simulated"))
    assert (dict(v1.TUNING_SPACE), dict(v1._WORKING), set(v1._UNLAUNCHABLE), dict(v1._INTERPRETER_CONFIG)) == before


def test_safe_rerun_drops_tma_and_warp_specialisation(bench, tmp_path, monkeypatch):
    from loftup.kernels import triton_attention_v2 as v2

    monkeypatch.setattr(bench, "SMOKE_PLAN", bench.replace(bench.SMOKE_PLAN, cases=bench.SMOKE_CASES[:1]))
    seen = []
    real = v2._forward
    monkeypatch.setattr(v2, "_forward", lambda *a, **kw: (seen.append(v2._OPTIONS["use_tma"]), real(*a, **kw))[1])
    written = bench.main(["--cpu-smoke", "--safe", "--out", str(tmp_path), "--sections", "environment,variants"])
    doc = json.loads(written["json"].read_text())
    assert doc["safe"] is True and seen and set(seen) == {False}
    assert {r["method"] for r in doc["sections"]["variants"]["rows"]} == {"v2_ptr", "v2_split"}
    assert v2._OPTIONS["use_tma"] is None  # restored


def test_gpu_mode_refuses_without_cuda(bench, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main(["--out", "/nonexistent"])
