"""`loftup bench --upsampler lift|featup_jbu`: rows for the kinds (their own FLOP counts, parity against
the PyTorch reference, the attention-only rows skipped with a reason), and the verb end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from loftup.cli import main

pytestmark = pytest.mark.export


def _tiny_spec():
    from loftup.backbones import get_spec

    return dataclasses.replace(get_spec("dinov2_vits14"), name="dinov2_tiny", embed_dim=32)


def test_kind_flop_counts_match_torchs_flop_counter():
    """kind_macs against torch's FlopCounterMode on the models (C=384, 224 px from 16 x 16). The
    counter sees convolutions only; what it cannot see is added here by definition: the engine's
    bilinear resize to the guidance size (4*C per guidance pixel) and, for FeatUp-JBU, the
    per-stage-pixel elementwise multiply-adds of the bicubic upsampling (16*C), the adaptive
    convolution (49*C) and the range logits (49 taps x 32 channels)."""
    from export_helpers import counted_macs

    from loftup.bench.flops import kind_macs
    from loftup.model import build_upsampler

    C, H, h = 384, 224, 16
    resize = H * H * 4 * C
    lift = counted_macs(build_upsampler("lift", C, patch_size=14), (1, C, h, h), (1, 3, H, H))
    assert kind_macs("lift", C, 1, H, H, h, h) == pytest.approx(lift + resize, rel=1e-9)
    jbu = counted_macs(build_upsampler("featup_jbu", C), (1, C, h, h), (1, 3, H, H))
    stage_pixels = sum((2**s * h) ** 2 for s in range(1, 5))
    assert kind_macs("featup_jbu", C, 1, H, H, h, h) == pytest.approx(jbu + stage_pixels * (16 * C + 49 * C + 49 * 32) + resize,
                                                                       rel=1e-9)
    assert kind_macs("lift", C, 2, H, H, h, h) == pytest.approx(2 * kind_macs("lift", C, 1, H, H, h, h))


@pytest.mark.parametrize("kind", ["lift", "featup_jbu"])
def test_bench_rows_for_the_kinds(tmp_path, kind):
    from loftup.bench.harness import BenchOptions, run_bench
    from loftup.model import build_upsampler

    torch.manual_seed(0)
    model = build_upsampler(kind, 32, **({"patch_size": 14} if kind == "lift" else {}))
    backends = ["torch-sdpa", "torch-reference", "triton"] + (["onnxruntime-cpu"] if kind == "lift" else [])
    report = run_bench(BenchOptions(sizes=[42], precisions=["fp32"], backends=backends, warmup=0, repeats=1, out=tmp_path,
                                    progress=False, plot=False), model=model, backbone_spec=_tiny_spec())
    rows = {r["backend"]: r for r in report.rows}
    ok = rows["torch-sdpa"]
    assert ok["status"] == "ok" and ok["upsampler"] == kind and ok["parity"]["passed"] and ok["work"]["gflop"] > 0
    assert rows["torch-reference"]["status"] == "skipped" and "no attention" in rows["torch-reference"]["reason"]
    assert rows["triton"]["status"] == "skipped"  # no GPU here
    if kind == "lift":
        assert rows["onnxruntime-cpu"]["status"] == "ok" and rows["onnxruntime-cpu"]["parity"]["passed"]
    data = json.loads(report.json_path.read_text())
    from loftup.bench.flops import KIND_FORMULAS

    assert data["model"]["upsampler"] == kind and data["flop_formula"] == KIND_FORMULAS[kind]


def test_bench_cli_upsampler(tmp_path, capsys):
    code = main(["bench", "--upsampler", "featup_jbu", "--random-init", "--sizes", "28", "--precisions", "fp32",
                 "--backends", "torch-sdpa", "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (json_file,) = tmp_path.glob("bench-*.json")
    data = json.loads(json_file.read_text())
    assert data["model"]["upsampler"] == "featup_jbu" and data["model"]["feat_dim"] == 384
    assert [r["status"] for r in data["rows"]] == ["ok"] and data["rows"][0]["lr_size"] == 2
    assert main(["bench", "--upsampler", "jbu", "--random-init"]) == 2
    assert "unknown upsampler kind 'jbu'" in capsys.readouterr().err
