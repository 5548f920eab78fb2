"""`loftup train --upsampler lift|featup_jbu`: each kind's own objective on bundled photos with the
shared loop - the loss falls, checkpoints record the kind, and a run resumed from a checkpoint
continues bit for bit (objective state included: FeatUp's downsampler and ScaleNet)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import TinyBackbone, write_photos

from loftup.errors import ConfigError
from loftup.model import kind_of, load_checkpoint
from loftup.train import Trainer, build_config
from loftup.train.baselines import AttentionDownsampler, apply_jitter, sample_jitter, sampled_crf_loss
from loftup.train.logs import load_state

N = 3
# tiny backbone: 16 channels, patch 7. LiFT needs sizes of 4 x patch (its 2x / 4x views).
KINDS = {
    "lift": dict(size=56, lr=3e-3),
    "featup_jbu": dict(size=28, lr=3e-3, crf_samples=200, jitters=2),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline-train")
    write_photos(root / "photos", n=8, side=64)
    return root


def cfg(root, kind, out, steps, **kw):
    return build_config(None, None, upsampler=kind, data=str(root / "photos"), out=str(root / out), steps=steps, batch_size=4,
                        num_workers=0, progress=False, log_every=1, save_every=100, **{**KINDS[kind], **kw})


@pytest.mark.parametrize("kind", list(KINDS))
def test_loss_falls_and_resume_is_exact(photos, kind):
    straight = Trainer(cfg(photos, kind, f"{kind}-straight", 2 * N), backbone=TinyBackbone()).fit()
    losses = straight.losses
    assert len(losses) == 2 * N and all(map(lambda v: v == v, losses))
    assert sum(losses[-2:]) < sum(losses[:2]), losses  # the loss falls

    part = Trainer(cfg(photos, kind, f"{kind}-split", 2 * N), backbone=TinyBackbone())
    part.fit(max_steps=N)  # stops early and writes a checkpoint
    state = load_state(photos / f"{kind}-split" / "checkpoints" / f"step-{N:08d}.state.pt")
    assert state["step"] == N
    if kind == "featup_jbu":
        assert "downsampler.w" in state["objective"]["extra"]
    resumed = Trainer(cfg(photos, kind, f"{kind}-split", 2 * N), backbone=TinyBackbone(), resume=True)
    r = resumed.fit()
    assert r.losses == losses[N:]  # bit for bit: data stream, RNG (jitters, dropout), optimiser, objective state
    a = load_file(str(photos / f"{kind}-straight" / "model.safetensors"))
    b = load_file(str(photos / f"{kind}-split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = load_checkpoint(photos / f"{kind}-split" / "model.safetensors")
    assert kind_of(model) == kind and not model.training and model.meta["upsampler"] == kind


def test_kind_config_errors(photos):
    with pytest.raises(ConfigError, match="multiple of 4 x the patch size"):
        Trainer(cfg(photos, "lift", "bad-size", 2, size=42), backbone=TinyBackbone())
    with pytest.raises(ConfigError, match="one stage with its own objective"):
        build_config(2, None, upsampler="featup_jbu", data=str(photos / "photos"), out=str(photos / "x"), steps=1)
    with pytest.raises(ConfigError, match="unknown upsampler kind"):
        build_config(None, None, upsampler="jbu", data=str(photos / "photos"), out=str(photos / "x"), steps=1)
    run = cfg(photos, "lift", "kind-guard", 2)
    Trainer(run, backbone=TinyBackbone()).fit(max_steps=1)
    from loftup.train import resume_config

    with pytest.raises(ConfigError, match="cannot change upsampler"):
        resume_config(photos / "kind-guard", {"upsampler": "featup_jbu"})


def test_featup_pieces():
    """Jitter identical on image and features; the downsampler maps p x p patches to the grid; the
    CRF's expanded squared distances equal the direct ones."""
    torch.manual_seed(0)
    img = torch.randn(2, 3, 42, 42)
    j = sample_jitter(42, 42, 20, 2.0)
    assert apply_jitter(img, 20, j).shape == img.shape
    both = apply_jitter(torch.cat([img, img[:, :1]], 1), 20, j)
    assert torch.equal(both[:, :3], apply_jitter(img, 20, j))
    down = AttentionDownsampler(5, 7)
    assert down(torch.randn(2, 5, 42, 42)).shape == (2, 5, 6, 6)
    g, f = torch.randn(1, 3, 9, 9), torch.randn(1, 4, 9, 9)
    torch.manual_seed(1)
    ours = sampled_crf_loss(g, f, 50)
    torch.manual_seed(1)
    ys, xs = torch.randint(0, 9, (50,)), torch.randint(0, 9, (50,))
    c = torch.stack([ys / 9, xs / 9])
    cd = (c.unsqueeze(-1) - c.unsqueeze(-2)).square().sum(0)
    gd = (g[0][:, ys, xs].unsqueeze(-1) - g[0][:, ys, xs].unsqueeze(-2)).square().sum(0)
    fd = (f[0][:, ys, xs].unsqueeze(-1) - f[0][:, ys, xs].unsqueeze(-2)).square().sum(0)
    sim = 10 * torch.exp(-cd / 0.2 - gd / 0.3) + 3 * torch.exp(-cd / 0.01)
    assert torch.allclose(ours, (fd * sim).mean(), rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_two_ranks(tmp_path, kind):
    """`torchrun --nproc-per-node 2` (gloo): LiFT matches one process with the same global batch (SGD;
    its BatchNorms become cross-rank); FeatUp-JBU trains its JBU under DDP and its downsampler /
    ScaleNet with averaged gradients (its jitters and projections are drawn per rank, so it is not
    compared number for number)."""
    import csv

    from test_ddp import WORKER, torchrun

    write_photos(tmp_path / "photos", n=8, side=64)
    torchrun(WORKER.with_name("ddp_baseline_worker.py"), kind, tmp_path / "photos", tmp_path / "ddp", out=tmp_path / "ddp")
    with open(tmp_path / "ddp" / "log.csv") as f:
        ddp = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(ddp) == 3 and all(v == v for v in ddp)
    assert kind_of(load_checkpoint(tmp_path / "ddp" / "model.safetensors")) == kind
    if kind == "lift":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one = Trainer(build_config(None, None, upsampler="lift", data=str(tmp_path / "photos"), out=str(tmp_path / "one"),
                                       steps=3, batch_size=4, size=56, num_workers=0, progress=False, log_every=1,
                                       optimizer="sgd", lr=0.05), backbone=TinyBackbone()).fit()
        finally:
            torch.set_num_threads(threads)
        assert ddp == pytest.approx(one.losses, rel=1e-4, abs=1e-5)
