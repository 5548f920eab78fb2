"""Shared test setup.

TRITON_INTERPRET must be set before `triton` is imported anywhere, so the Triton kernels run
on CPU tensors through the interpreter (there is no GPU on our machines).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# The interpreter runs tile matmuls through numpy; multi-threaded OpenBLAS on tiny tiles is
# 10-300x slower on a shared 2-core machine (measured). torch uses its own BLAS, unaffected.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Under pytest-xdist (`-n auto` in pyproject's addopts: one worker per CPU) each worker takes one core: two workers
# with two threads each would fight over the two cores. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import onnxruntime as _ort

    class _NoSpinSessionOptions(_ort.SessionOptions):
        """ONNX Runtime's pool threads spin between ops; under two workers on two cores a spinning
        pool takes the core the other worker needs. Thread counts stay as each test sets them."""

        def __init__(self):
            super().__init__()
            self.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.add_session_config_entry("session.inter_op.allow_spinning", "0")

    _ort.SessionOptions = _NoSpinSessionOptions

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from run_once import once_per_run  # noqa: E402

OFFICIAL = Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """Folder of the official LoftUp / DINOv2 / CLIP parity fixtures (see its FACTS.md)."""
    return OFFICIAL


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models are per-op-overhead bound, and one thread is much faster than two spinning
    threads on a loaded 2-core machine (measured: a 2x2 -> 32x32 JBU forward 0.01 s vs 2 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """One `loftup demo --quick` run shared by the tests of tests/cli/test_demo.py (one to three
    minutes; once per run, across workers): (exit code, stdout, stderr, out folder)."""

    def make(folder):
        import contextlib
        import io

        from cli_support import QUICK_DEMO_ARGS

        from loftup.cli import main

        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main([*QUICK_DEMO_ARGS, "--out", str(folder / "report")])
        return [code, stdout.getvalue(), stderr.getvalue()]

    (code, stdout, stderr), folder = once_per_run(tmp_path_factory, "quick-demo", make)
    return code, stdout, stderr, folder / "report"
