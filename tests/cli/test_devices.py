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
