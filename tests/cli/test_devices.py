"""One `--device` rule for every verb: resolve_device, and the one-line errors it gives the CLI."""

import pytest
import torch
from cli_support import assert_one_line_error, run

from loftup.runtime.devices import resolve_device
from loftup.errors import BackendUnavailableError, ConfigError


def test_resolve_device_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BackendUnavailableError, match="'cuda:1' is not available.*--device cpu"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="'meta' is not supported"):
        resolve_device("meta")


def test_resolve_device_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")  # a bare cuda is this rank's GPU
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda:0")


@pytest.mark.parametrize("args", [
    ["eval", "--probe", "mini", "--random-init"],
    ["bench", "--random-init", "--sizes", "28", "--backends", "torch-sdpa", "--precisions", "fp32"],
    ["upsample", "sample:astronaut", "--random-init"],
    ["train", "--stage", "1", "--data", "."],
])
def test_every_verb_refuses_a_missing_gpu_in_one_line(args, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(args + ["--device", "cuda", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "'cuda' is not available", "--device cpu")
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # nothing written


# -- bf16 where the CPU has no bf16 instructions ----------------------------------------------
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n"  # an AMD EPYC Zen 3: AVX2 only
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n"


def test_bf16_in_cpuinfo_reads_the_flags():
    from loftup.runtime.devices import bf16_in_cpuinfo

    assert bf16_in_cpuinfo(ZEN3) is False
    assert bf16_in_cpuinfo(ZEN4) is True
    assert bf16_in_cpuinfo(ARM) is True
    assert bf16_in_cpuinfo("processor\t: 0\nflags\t\t: avx512f avx512bw\n") is False  # AVX-512 without its bf16 extension
    assert bf16_in_cpuinfo("") is None  # nothing to read: the caller asks oneDNN


@pytest.mark.parametrize("native", [False, True])
def test_fast_precision_and_the_emulated_bf16_warning(native, monkeypatch):
    from loftup.runtime import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    assert devices.bf16_is_fast("cpu") is native
    assert devices.fast_precision("cpu") == ("bf16" if native else "fp32")
    warning = devices.emulated_bf16_warning("cpu", "bf16")
    assert (warning is None) is native
    if not native:
        assert "no bf16 instructions" in warning and "use fp32" in warning
    assert devices.emulated_bf16_warning("cpu", "fp32") is None


@pytest.mark.parametrize("native", [False, True])
def test_a_bf16_engine_on_a_cpu_without_bf16_warns(native, monkeypatch):
    import warnings

    from loftup.export.engine import TorchEngine
    from loftup.model import LoftUp, LoftUpConfig
    from loftup.runtime import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    model = LoftUp(LoftUpConfig(feat_dim=8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TorchEngine(model, precision="bf16")
        TorchEngine(model, precision="fp32")
    slow = [w for w in caught if "no bf16 instructions" in str(w.message)]
    assert len(slow) == (0 if native else 1)


@pytest.mark.parametrize("native", [False, True])
def test_bench_leaves_bf16_out_of_its_default_where_it_is_emulated(native, monkeypatch, tmp_path):
    from loftup.bench.harness import BenchOptions, check_options
    from loftup.runtime import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    opts, _ = check_options(BenchOptions(out=tmp_path / "b"))
    assert opts.precisions == (["fp32", "bf16", "int8"] if native else ["fp32", "int8"])
    opts, _ = check_options(BenchOptions(out=tmp_path / "b", precisions=["bf16"]))
    assert opts.precisions == ["bf16"]  # asked for: timed anyway


@pytest.mark.parametrize("native", [False, True])
def test_the_demo_trains_in_bf16_only_where_the_cpu_has_it(native, monkeypatch, tmp_path):
    from loftup.commands import demo
    from loftup.runtime import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    seen = []

    class Recorder:
        def __init__(self, opts, log):
            seen.append(opts.precision)

        def run(self):
            return {}

    monkeypatch.setattr(demo, "Demo", Recorder)
    demo.run_demo(demo.DemoOptions(out=tmp_path / "d"))
    demo.run_demo(demo.DemoOptions(out=tmp_path / "d", precision="bf16"))
    assert seen == ["bf16" if native else "fp32", "bf16"]


def test_the_gemm_peak_shrinks_its_matrices_where_a_multiply_is_slow(monkeypatch):
    from loftup.bench.harness import measure_gemm_peak

    sizes, matmul = [], torch.matmul

    def recording(a, b):
        sizes.append(a.shape[0])
        return matmul(a, b)

    monkeypatch.setattr(torch, "matmul", recording)
    assert measure_gemm_peak("fp32", repeats=1, max_seconds=1e-9) > 0
    assert sizes == [512, 64, 64]  # the probe (n / 4), then the smallest size
    sizes.clear()
    assert measure_gemm_peak("fp32", repeats=1, max_seconds=1e9) > 0
    assert sizes == [512, 2048, 2048]
