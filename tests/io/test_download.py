"""The online path for real: `upsampler="official"` and `weights="online"` download through
loftup.io.download from a local 127.0.0.1 server serving the tiny official fixtures. Cache, hash,
truncation, 404 and no network: one CheckpointError line each, and nothing left in the cache."""

import dataclasses
import hashlib

import pytest
import torch
from local_server import LocalServer, files_under, no_proxy, refused_url  # noqa: F401 (no_proxy is a fixture)

from loftup.errors import CheckpointError
from loftup.model import load_checkpoint
from loftup.model import registry

pytestmark = pytest.mark.usefixtures("no_proxy")
ROW = "loftup_dinov2s"
PATH = "/haiwen/loftup-dinov2s/resolve/main/pytorch_model.bin"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("LOFTUP_CACHE", str(folder))
    return folder


@pytest.fixture
def served(official_dir):
    data = (official_dir / "loftup_tiny.safetensors").read_bytes()
    with LocalServer({PATH: data}) as server:
        yield server, data


def point_row(monkeypatch, url, sha256=None):
    row = dataclasses.replace(registry.WEIGHTS[ROW], location=url, sha256=sha256)
    monkeypatch.setitem(registry.WEIGHTS, ROW, row)
    return row


def one_line_error(call, *needles) -> str:
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


def test_official_weights_are_downloaded_once_then_read_from_the_cache(monkeypatch, cache, served, official_dir):
    server, data = served
    point_row(monkeypatch, server.url(PATH), sha256=hashlib.sha256(data).hexdigest())
    path, weights = registry.resolve_upsampler("official", "dinov2_vits14")
    assert weights == "online"  # "default" pairs the official upsampler with the official backbone weights
    assert path.parent == cache / "upsamplers" and path.read_bytes() == data
    assert server.requests[PATH] == 1
    again, _ = registry.resolve_upsampler("official", "dinov2_vits14")
    assert again == path and server.requests[PATH] == 1  # the cache: no second request
    expected = load_checkpoint(official_dir / "loftup_tiny.safetensors")
    got = load_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), got.state_dict().values()))
    assert files_under(cache) == [f"upsamplers/{path.name}"]


def test_a_wrong_hash_keeps_nothing(monkeypatch, cache, served):
    server, _ = served
    point_row(monkeypatch, server.url(PATH), sha256="0" * 64)
    one_line_error(lambda: registry.resolve_upsampler("official", "dinov2_vits14"), "sha256", "not the expected", "not kept")
    assert server.requests[PATH] == 1 and files_under(cache) == []


def test_a_truncated_download_keeps_nothing(monkeypatch, cache, served):
    server, data = served
    server.mode[PATH] = "truncate"
    point_row(monkeypatch, server.url(PATH))  # no hash in the row: the length check alone catches it
    one_line_error(lambda: registry.resolve_upsampler("official", "dinov2_vits14"), "cut short", "run again")
    assert files_under(cache) == []
    server.mode[PATH] = "ok"  # the next try, with the file whole, lands in the cache
    path, _ = registry.resolve_upsampler("official", "dinov2_vits14")
    assert path.read_bytes() == data and server.requests[PATH] == 2


def test_a_404_keeps_nothing(monkeypatch, cache, served):
    server, _ = served
    point_row(monkeypatch, server.url("/haiwen/gone/resolve/main/pytorch_model.bin"))
    one_line_error(lambda: registry.resolve_upsampler("official", "dinov2_vits14"), "HTTP 404", "by hand")
    assert files_under(cache) == []


def test_no_network_keeps_nothing(monkeypatch, cache):
    point_row(monkeypatch, refused_url(PATH))
    one_line_error(lambda: registry.resolve_upsampler("official", "dinov2_vits14"), "cannot download", "refused", "network")
    assert files_under(cache) == []


def test_backbone_weights_online_go_through_the_same_download(monkeypatch, tmp_path, official_dir):
    from loftup.backbones import create_backbone, registry as backbones
    from loftup.backbones.clip import CLIP_TINY

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    data = (official_dir / "clip_tiny.safetensors").read_bytes()
    path = "/clip/models/ViT-B-16.pt"
    with LocalServer({path: data}) as server:
        spec = backbones.BACKBONES["clip_vitb16"]
        tiny = dataclasses.replace(spec, config=CLIP_TINY, embed_dim=32, url=server.url(path), url_sha256="ab" * 32)
        monkeypatch.setitem(backbones.BACKBONES, "clip_vitb16", tiny)
        one_line_error(lambda: create_backbone("clip_vitb16", weights="online"), "sha256", "not kept")
        assert files_under(tmp_path / "torch") == []
        monkeypatch.setitem(backbones.BACKBONES, "clip_vitb16", dataclasses.replace(tiny, url_sha256=hashlib.sha256(data).hexdigest()))
        bb = create_backbone("clip_vitb16", weights="online")
        assert bb.embed_dim == 32 and bb.weights_source == server.url(path)
        create_backbone("clip_vitb16", weights="online")
        assert server.requests[path] == 2  # the failed try and the first good one; the third call read the cache
        assert files_under(tmp_path / "torch") == ["hub/checkpoints/ViT-B-16.pt"]


def test_the_cli_says_it_in_one_line_and_writes_nothing(monkeypatch, cache, served, tmp_path, capsys):
    from cli_support import assert_one_line_error, run

    server, _ = served
    point_row(monkeypatch, server.url("/missing.bin"))
    code, _, err = run(["upsample", "sample:chelsea", "--checkpoint", "official", "--size", "28", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "HTTP 404", "/missing.bin")
    assert not (tmp_path / "o").exists() and files_under(cache) == []
