"""Fixtures for the eval tests (helpers and the tiny backbones live in eval_fixtures.py)."""

import pytest
import torch
from eval_fixtures import (
    write_cityscapes,
    write_cocostuff,
    write_davis,
    write_matting,
    write_navi,
    write_rgbd,
)


@pytest.fixture()
def coco_dir(tmp_path):
    return write_cocostuff(tmp_path / "cocostuff")


@pytest.fixture()
def city_dir(tmp_path):
    return write_cityscapes(tmp_path / "cityscapes")


@pytest.fixture()
def rgbd_dir(tmp_path):
    return write_rgbd(tmp_path / "rgbd")


@pytest.fixture()
def navi_dir(tmp_path):
    return write_navi(tmp_path / "navi")


@pytest.fixture()
def davis_dir(tmp_path):
    return write_davis(tmp_path / "davis")


@pytest.fixture()
def matting_dir(tmp_path):
    return write_matting(tmp_path / "matting")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A random-init LoftUp for the tiny_conv backbone (16 channels), in our checkpoint format."""
    from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

    torch.manual_seed(0)
    model = LoftUp(LoftUpConfig(feat_dim=16, backbone="tiny_conv")).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny16.safetensors")


@pytest.fixture(autouse=True)
def _one_thread():
    """The eval tests run tiny tensors: one intra-op thread is faster than two, and on a loaded
    2-core machine two threads spin against other processes (measured 17 ms vs 1.7 s per
    probe-head step). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
