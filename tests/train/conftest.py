"""Fixtures for training tests: a tiny frozen backbone and small photo folders written per test
(the builders live in train_helpers.py, which test modules import by that unique name)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import TinyBackbone, write_photos


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny training steps are per-op-overhead bound: one intra-op thread is faster (and far
    faster on a loaded machine) than two spinning threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    d = tmp_path / "photos"
    write_photos(d)
    return d
