"""Shared test setup.

TRITON_INTERPRET must be set before `triton` is imported anywhere, so the Triton kernels run
on CPU tensors through the interpreter (there is no GPU on our machines).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# The interpreter runs tile matmuls through numpy; multi-threaded OpenBLAS on tiny tiles is
# 10-300x slower on a shared 2-core machine (measured). torch uses its own BLAS, unaffected.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

OFFICIAL = Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """Folder of the official LoftUp / DINOv2 / CLIP parity fixtures (see its FACTS.md)."""
    return OFFICIAL
