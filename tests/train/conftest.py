"""Fixtures for training tests: a tiny frozen backbone and small photo folders written per test
(the builders live in train_helpers.py, which test modules import by that unique name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import TinyBackbone, write_photos


@pytest.fixture(autouse=True, scope="module")
def _one_thread_for_training(one_thread):
    """Every training test module runs with one intra-op thread (tests/conftest.py `one_thread`):
    tiny training steps are per-op-overhead bound."""
    yield


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    d = tmp_path / "photos"
    write_photos(d)
    return d
