"""Resume: N steps, Ctrl-C, resume N more == 2N straight, bit for bit (CPU, same seed)."""

import os
import signal

import pytest
import torch
from train_helpers import TinyBackbone, write_photos
from safetensors.torch import load_file

from loftup.errors import CheckpointError, ConfigError
from loftup.model import LoftUp, LoftUpConfig, save_checkpoint
from loftup.train import Trainer, build_config, resume_config
from loftup.train.logs import load_state

N = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_photos(root / "photos", n=8, side=48)
    torch.manual_seed(0)
    save_checkpoint(LoftUp(LoftUpConfig(feat_dim=16)), root / "init.safetensors")
    return root


def cfg(root, out, **kw):
    return build_config(2, "paper", data=str(root / "photos"), out=str(root / out), init=str(root / "init.safetensors"),
                        steps=2 * N, batch_size=4, size=28, num_workers=0, progress=False, log_every=1, save_every=100,
                        ema_every=2, lr=1e-3, schedule="cosine", warmup_steps=2, hflip=True, crop="random", **kw)


def test_interrupt_and_resume_equals_straight_run(data, capsys):
    straight = Trainer(cfg(data, "straight"), backbone=TinyBackbone()).fit()
    assert straight.step == 2 * N

    def ctrl_c(trainer, step, metrics):
        if step == N:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers; handled at the step boundary

    with pytest.raises(KeyboardInterrupt) as stopped:  # an Interrupted, which the CLI prints as its one line
        Trainer(cfg(data, "split"), backbone=TinyBackbone(), callbacks=[ctrl_c]).fit()
    assert "stopped at step 3/6" in stopped.value.line() and "--resume --out" in stopped.value.line()
    assert stopped.value.exit_code == 130
    state = load_state(data / "split" / "checkpoints" / f"step-{N:08d}.state.pt")  # weights_only=True inside
    assert state["step"] == N and "teacher" in state["objective"] and state["elapsed_s"] > 0

    resumed = Trainer(cfg(data, "split"), backbone=TinyBackbone(), resume=True)
    assert resumed.step == N and resumed.elapsed_before == state["elapsed_s"]
    r = resumed.fit()
    assert r.step == 2 * N and len(r.losses) == N
    assert r.losses == straight.losses[N:]
    for name in ("model.safetensors", "teacher.safetensors"):
        a, b = load_file(str(data / "straight" / name)), load_file(str(data / "split" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = (data / "split" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 2 * N + 1)]
    elapsed = [float(r.split(",")[-1]) for r in rows[1:]]
    assert rows[0].endswith("elapsed_s") and elapsed == sorted(elapsed)  # the clock goes on across the resume
    assert elapsed[N] > state["elapsed_s"]


def test_resume_guards(data):
    run = cfg(data, "guards")
    Trainer(run, backbone=TinyBackbone()).fit(max_steps=1)
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(run, backbone=TinyBackbone())
    with pytest.raises(ConfigError, match="lr"):
        resume_config(data / "guards", {"lr": 0.5})
    longer = resume_config(data / "guards", {"steps": 2 * N + 1, "num_workers": 0})
    assert longer.steps == 2 * N + 1 and longer.lr == run.lr
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(cfg(data, "never-started"), backbone=TinyBackbone(), resume=True)
