"""--memory-budget on export's parity run and on eval, and eval's probe tolerance for int8 engines
(issue 26): the values reach the PyTorch reference, bad values fail before any work."""

from __future__ import annotations

import types

import pytest

from loftup.errors import ConfigError
from loftup.export.engine import reference_engine
from loftup.export.exporter import ExportOptions, check_engine, export_engine
from loftup.export.formats import FORMATS

GB = 2**30


class Stop(Exception):
    pass


def test_reference_engine_takes_a_memory_budget(model):
    assert reference_engine(model, memory_budget=3 * GB).model.upsampler.memory_budget == 3 * GB
    assert reference_engine(model).model.upsampler.memory_budget is None  # the default, taken at call time


@pytest.mark.parametrize("text, want", [("2GB", 2 * GB), ("auto", None), (None, None)])
def test_export_passes_the_budget_to_its_parity_run(monkeypatch, tmp_path, model, text, want):
    import loftup.export.exporter as ex

    seen = {}
    monkeypatch.setattr(ex, "load_model_and_backbone", lambda opts: (model, None, "upsampler"))
    monkeypatch.setattr(ex, "export_model", lambda *a, **k: seen.update(k) or "done")
    assert export_engine(ExportOptions(random_init=True, feat_dim=32, memory_budget=text, out=tmp_path / "m.onnx")) == "done"
    assert seen["memory_budget"] == want


def test_check_engine_gives_the_budget_to_the_reference(monkeypatch, tmp_path, model):
    import loftup.export.engine as eng

    seen = {}

    def fake_reference(m, backbone=None, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(eng, "load_engine", lambda path: None)
    monkeypatch.setattr(eng, "reference_engine", fake_reference)
    with pytest.raises(Stop):
        check_engine(tmp_path / "m.onnx", model, None, (28, 56, 112), 1, "fp32", log=lambda m: None, memory_budget=GB)
    assert seen["memory_budget"] == GB


def test_a_bad_budget_fails_before_loading(monkeypatch, tmp_path):
    import loftup.eval.runner as runner
    import loftup.export.exporter as ex

    monkeypatch.setattr(ex, "load_model_and_backbone", lambda opts: pytest.fail("loaded a model first"))
    with pytest.raises(ConfigError, match="--memory-budget"):
        export_engine(ExportOptions(random_init=True, feat_dim=32, memory_budget="lots", out=tmp_path / "m.onnx"))
    monkeypatch.setattr(runner, "plan_eval", lambda *a, **k: pytest.fail("loaded a model first"))
    with pytest.raises(ConfigError, match="--memory-budget"):
        runner.run_eval(runner.EvalOptions(probe="mini", memory_budget="lots", out=tmp_path / "eval"))
    from loftup.bench.harness import BenchOptions
    from loftup.bench.harness import check_options as check_bench
    from loftup.commands.upsample import UpsampleOptions
    from loftup.commands.upsample import check_options as check_upsample

    with pytest.raises(ConfigError, match="--memory-budget"):  # bench and upsample check theirs in their option checks
        check_bench(BenchOptions(random_init=True, sizes=[56], memory_budget="lots"))
    with pytest.raises(ConfigError, match="--memory-budget"):
        check_upsample(UpsampleOptions(memory_budget="lots"))


def test_eval_budget_reaches_its_pytorch_upsamplers(model):
    from loftup.eval.runner import EvalOptions, memory_budget
    from loftup.eval.upsamplers import LoftUpFeatures

    assert memory_budget(EvalOptions(probe="mini", memory_budget="800MB")) == 800 * 2**20
    assert memory_budget(EvalOptions(probe="mini", memory_budget="auto")) is None
    runner = types.SimpleNamespace(embed_dim=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    for reference in (True, False):
        src = LoftUpFeatures(runner, model, reference=reference, memory_budget=GB)
        assert src.engine.model.upsampler.memory_budget == GB


def test_eval_probe_tolerance_comes_from_the_engine_format_row():
    from loftup.eval.parity import DEFAULT_ATOL, DEFAULT_RTOL
    from loftup.eval.runner import EvalOptions, probe_tolerance

    row = FORMATS["onnx"].tolerance("int8")
    int8 = types.SimpleNamespace(metadata={"format": "onnx", "precision": "int8"})
    fp32 = types.SimpleNamespace(metadata={"format": "onnx", "precision": "fp32"})
    opts = EvalOptions(probe="mini")
    assert probe_tolerance(opts, int8) == (row.probe_atol, row.probe_rtol)
    assert probe_tolerance(opts, fp32) == (DEFAULT_ATOL, DEFAULT_RTOL)
    assert probe_tolerance(opts, None) == (DEFAULT_ATOL, DEFAULT_RTOL)
    assert probe_tolerance(EvalOptions(probe="mini", atol=0.5, rtol=0.0), int8) == (0.5, 0.0)  # the user's word wins


@pytest.mark.parametrize("text, want", [("2GB", 2 * GB), ("auto", None)])
def test_bench_rows_take_auto_at_run_time(model, text, want):
    """bench --memory-budget auto: the engine gets None, so each forward takes the default from the
    resident memory then (a reference output or a profiler held since start-up is not charged to
    the row, which made `bench --profile --sizes 448` refuse its own default budget); a size: bytes."""
    from loftup.bench.harness import BACKENDS, BenchOptions, EngineFactory

    factory = EngineFactory(model, 14, BenchOptions(sizes=[56], memory_budget=text))
    try:
        engine = factory.get(BACKENDS["torch-sdpa"], "fp32")
    finally:
        factory.close()
    assert engine.memory_budget == want and engine.model.upsampler.memory_budget == want
