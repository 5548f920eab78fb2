"""Stage 1 learns the pseudo-GT; stage 2 distils from an EMA teacher that follows its decay rule."""

import math

import pytest
import torch
from train_helpers import TinyBackbone, write_photos

from loftup.model import load_checkpoint
from loftup.train import Trainer, build_config
from loftup.train.data import collate
from loftup.train.stage1 import window_box
from loftup.train.stage2 import EmaTeacher, Stage2Objective, TrainingError, affinity_loss, central

SIZE = 28


def config(stage, root, **kw):
    base = dict(data=str(root / "photos"), out=str(root / f"s{stage}"), batch_size=4, size=SIZE, num_workers=0,
                progress=False, log_every=5, seed=0)
    base.update(kw)
    return build_config(stage, "paper", **base)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    write_photos(root / "photos", n=8, side=64)
    result = Trainer(config(1, root, steps=30, masks="felzenszwalb"), backbone=TinyBackbone()).fit()
    return root, result


def test_stage1_loss_falls_on_superpixel_masks(stage1_run):
    root, r = stage1_run
    first, last = sum(r.losses[:3]) / 3, sum(r.losses[-3:]) / 3
    print(f"stage 1 loss: first 3 steps {first:.4f}, last 3 steps {last:.4f}")
    assert last < 0.35 * first
    assert r.finished and (root / "s1" / "model.safetensors").is_file()
    model = load_checkpoint(root / "s1" / "model.safetensors", feat_dim=16)
    assert model.meta["stage"] == 1 and model.meta["step"] == 30
    log = (root / "s1" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 1 + 6


def fixed_batch(trainer, n=4, seed=123):
    return trainer._to_device(collate([trainer.dataset[(i, SIZE, seed)] for i in range(n)]))


def test_stage2_distils_and_the_teacher_follows_the_ema_rule(stage1_run):
    root, _ = stage1_run
    snaps = {}

    def snapshot(trainer, step, metrics):
        snaps[step] = {k: v.detach().clone().double() for k, v in trainer.core.state_dict().items()}

    cfg = config(2, root, init=str(root / "s1" / "model.safetensors"), steps=20, lr=1e-3, ema_every=5)
    tr = Trainer(cfg, backbone=TinyBackbone(), callbacks=[snapshot])
    t0 = {k: v.detach().clone().double() for k, v in tr.objective.teacher.module.state_dict().items()}
    s0 = {k: v.detach().clone().double() for k, v in tr.core.state_dict().items()}
    assert all(torch.equal(t0[k], s0[k]) for k in t0)  # both start from the stage-1 weights
    batch = fixed_batch(tr)

    def fixed_loss():  # eval mode: BatchNorm running statistics stay untouched
        tr.core.eval()
        with torch.no_grad():
            value = float(tr.objective.loss(tr, batch)[0])
        tr.core.train()
        return value

    before = fixed_loss()
    r = tr.fit()
    after = fixed_loss()
    print(f"stage 2 distillation loss on a fixed batch: {before:.5f} -> {after:.5f}; per step {r.losses[0]:.5f} .. {r.losses[-1]:.5f}")
    assert min(r.losses) > 0 and after < 0.8 * before

    # hand computation of the EMA: every 5 steps, T = 0.99 T + 0.01 S (parameters and float buffers)
    teacher = tr.objective.teacher.module.state_dict()
    assert tr.objective.teacher.updates == 4
    for k, t in t0.items():
        if not teacher[k].is_floating_point():
            assert torch.equal(teacher[k].double(), snaps[20][k])  # counters are copied
            continue
        want = t
        for step in (5, 10, 15, 20):
            want = 0.99 * want + 0.01 * snaps[step][k]
        assert torch.allclose(teacher[k].double(), want, rtol=1e-5, atol=1e-6), k
    diffs = [float((teacher[k].double() - snaps[20][k]).abs().max()) for k in t0 if teacher[k].is_floating_point()]
    assert max(diffs) > 1e-4  # the teacher lags the student
    assert (root / "s2" / "teacher.safetensors").is_file()


def test_ema_teacher_rule_in_isolation():
    s = torch.nn.Linear(3, 2)
    ema = EmaTeacher(s, decay=0.9, every=2)
    w0 = s.weight.detach().clone()
    with torch.no_grad():
        s.weight.add_(1.0)
    assert not ema.update(s, 1) and torch.equal(ema.module.weight, w0)
    assert ema.update(s, 2)
    assert torch.allclose(ema.module.weight, 0.9 * w0 + 0.1 * (w0 + 1.0), atol=1e-6)
    assert not ema.module.weight.requires_grad and ema.module.weight is not s.weight


def test_affinity_loss_matches_explicit_gram_matrices():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, 6, 5), torch.randn(3, 4, 6, 5)  # P = 30 > C = 4: the C x C identity path
    an = torch.nn.functional.normalize(a.flatten(2), dim=1)
    bn = torch.nn.functional.normalize(b.flatten(2), dim=1)
    direct = ((an.transpose(1, 2) @ an - bn.transpose(1, 2) @ bn) ** 2).mean()
    assert torch.allclose(affinity_loss(a, b), direct, rtol=1e-5)
    small_a, small_b = torch.randn(2, 40, 3, 3), torch.randn(2, 40, 3, 3)  # P = 9 <= C: explicit path
    sa = torch.nn.functional.normalize(small_a.flatten(2), dim=1)
    sb = torch.nn.functional.normalize(small_b.flatten(2), dim=1)
    assert torch.allclose(affinity_loss(small_a, small_b), ((sa.transpose(1, 2) @ sa - sb.transpose(1, 2) @ sb) ** 2).mean())
    assert float(affinity_loss(a, a * 3.0)) == pytest.approx(0.0, abs=1e-6)  # cosine: scale-free
    assert central(torch.zeros(1, 1, 10, 10), 0.8).shape[-2:] == (8, 8)


class ConstantUpsampler(torch.nn.Module):
    """A broken 'upsampler' whose output ignores its input: the distillation signal is zero."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, lr, image):
        B, _, H, W = image.shape
        return self.w * torch.ones(B, 4, H, W)


def test_identically_zero_distillation_loss_fails_loudly():
    cfg = build_config(2, "paper", size=SIZE)
    obj = Stage2Objective(cfg, ConstantUpsampler())

    class FakeTrainer:
        model = ConstantUpsampler()
        features = staticmethod(lambda x: torch.zeros(x.shape[0], 4, 2, 2))
        autocast = staticmethod(torch.no_grad)

    batch = {
        "image": torch.randn(1, 3, SIZE, SIZE), "t_images": torch.randn(1, 2, 3, SIZE, SIZE),
        "t_masks": torch.zeros(1, 2, 0, SIZE, SIZE, dtype=torch.bool), "t_boxes": torch.tensor([[[0, 0, 10], [5, 5, 14]]]),
    }
    with pytest.raises(TrainingError, match="exactly zero"):
        obj.loss(FakeTrainer(), batch)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    write_photos(tmp_path / "photos", n=4, side=48)
    r = Trainer(config(1, tmp_path, steps=2, precision="bf16", batch_size=2), backbone=TinyBackbone()).fit()
    assert len(r.losses) == 2 and all(math.isfinite(x) for x in r.losses)


def test_offline_preset_trains_on_oracle_targets_in_windows(tmp_path):
    from loftup.train.stage1 import oracle_target, window_box

    write_photos(tmp_path / "photos", n=6, side=64)
    cfg = build_config(1, "offline", data=str(tmp_path / "photos"), out=str(tmp_path / "s1"), size=SIZE, window=12,
                       batch_size=3, steps=12, warmup_steps=2, num_workers=0, progress=False, log_every=4, seed=0)
    assert (cfg.target, cfg.window, cfg.oracle_scale, cfg.schedule) == ("oracle", 12, 2.0, "cosine")
    trainer = Trainer(cfg, backbone=TinyBackbone())
    batch = fixed_batch(trainer, n=3)
    trainer.step = 5
    loss, _ = trainer.objective.loss(trainer, batch)
    # the same loss by hand: the backbone at 2x, channel-normed, bilinear; the model's window vs its slice
    image = batch["image"]
    with torch.no_grad():
        hr = trainer.features(image, input_size=2 * SIZE)
        assert hr.shape[-1] == 2 * SIZE // trainer.patch_size
        target = oracle_target(trainer.core.channelnorm(hr), (SIZE, SIZE))
        top, left, h, w = window_box((SIZE, SIZE), 12, 0, 5)
        assert (h, w) == (12, 12) and window_box((SIZE, SIZE), 12, 0, 5) == (top, left, h, w)
        pred = trainer.model(trainer.features(image), image, window=(top, left, h, w))
    assert pred.shape == (3, 16, 12, 12)
    expected = torch.nn.functional.mse_loss(pred, target[:, :, top:top + h, left:left + w])
    assert loss.item() == pytest.approx(float(expected), rel=1e-4)
    trainer.step = 0
    r = trainer.fit()
    assert r.finished and len(r.losses) == 12 and all(math.isfinite(x) for x in r.losses)
    assert sum(r.losses[-3:]) < sum(r.losses[:3])


def twin_trainers(tmp_path, window: int = 12, **knob):
    """Two offline-preset Trainers with the same weights at step 5, the second with `knob` set
    (and the first with it at 0), and one fixed batch of 2: the loss with and without the knob."""
    write_photos(tmp_path / "photos", n=4, side=64)
    kw = dict(data=str(tmp_path / "photos"), out=str(tmp_path / "s1"), size=SIZE, window=window, batch_size=2, steps=2,
              num_workers=0, progress=False, seed=0)
    (name, value), = knob.items()
    plain, other = (Trainer(build_config(1, "offline", **{name: v}, **kw), backbone=TinyBackbone()) for v in (0.0, value))
    other.model.load_state_dict(plain.model.state_dict())
    plain.step = other.step = 5
    return plain, other, fixed_batch(plain, n=2)


def test_tv_weight_adds_the_smoothness_term_to_the_stage1_loss(tmp_path):
    from loftup.train.stage1 import tv_penalty

    ramp = torch.arange(12.0).reshape(1, 1, 3, 4)  # rows step by 4, columns by 1
    assert tv_penalty(ramp).item() == pytest.approx(16 + 1)
    assert tv_penalty(torch.full((2, 3, 5, 5), 7.0)).item() == 0
    plain, smooth, batch = twin_trainers(tmp_path, tv_weight=3.0)
    base, _ = plain.objective.loss(plain, batch)
    loss, _ = smooth.objective.loss(smooth, batch)
    with torch.no_grad():
        top, left, h, w = window_box((SIZE, SIZE), 12, 0, 5)
        pred = smooth.model(smooth.features(batch["image"]), batch["image"], window=(top, left, h, w))
    assert loss.item() == pytest.approx(base.item() + 3.0 * tv_penalty(pred).item(), rel=1e-5)
    assert tv_penalty(pred).item() > 1e-3 * base.item()  # the term is there to see


def test_target_blend_mixes_bilinear_low_res_features_into_the_oracle_target(tmp_path):
    from loftup.train.stage1 import oracle_target

    hr, lr = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    up = lambda x: torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    assert torch.equal(oracle_target(hr, (16, 16), lr, 0.0), up(hr))
    torch.testing.assert_close(oracle_target(hr, (16, 16), lr, 0.25), 0.75 * up(hr) + 0.25 * up(lr))
    with pytest.raises(ValueError, match="low-res"):
        oracle_target(hr, (16, 16), None, 0.5)
    plain, mixed, batch = twin_trainers(tmp_path, target_blend=0.4)
    loss, _ = mixed.objective.loss(mixed, batch)
    image = batch["image"]
    with torch.no_grad():
        norm = mixed.core.channelnorm
        lr_f, hr_f = mixed.features(image), mixed.features(image, input_size=2 * SIZE)
        size = tuple(image.shape[-2:])
        resize = lambda x: torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        target = 0.6 * resize(norm(hr_f)) + 0.4 * resize(norm(lr_f))
        top, left, h, w = window_box(size, 12, 0, 5)
        pred = mixed.model(lr_f, image, window=(top, left, h, w))
    expected = torch.nn.functional.mse_loss(pred, target[:, :, top:top + h, left:left + w])
    assert loss.item() == pytest.approx(float(expected), rel=1e-4)
    assert abs(loss.item() - plain.objective.loss(plain, batch)[0].item()) > 1e-3 * loss.item()  # the blend changes it


def test_patch_consistency_holds_each_whole_cell_mean_to_its_low_res_feature(tmp_path):
    from loftup.errors import ConfigError
    from loftup.train.stage1 import patch_consistency

    lr = torch.randn(1, 2, 4, 4)
    wiggle = torch.tensor([[1.0, -1.0], [-2.0, 2.0]]).repeat(4, 4)  # zero mean over every 2 x 2 cell
    pred = lr.repeat_interleave(2, 2).repeat_interleave(2, 3) + wiggle
    assert patch_consistency(pred, lr, (8, 8)).item() == pytest.approx(0, abs=1e-12)
    off = pred.clone()
    off[:, :, 2:4, 4:6] += 3.0  # one cell's mean off by 3 in both channels
    assert patch_consistency(off, lr, (8, 8)).item() == pytest.approx(9 / 16)
    # a window (top 1, left 3, 5 x 4): only the cells wholly inside count - rows 2-5, columns 4-5
    window = off[:, :, 1:6, 3:7]
    assert patch_consistency(window, lr, (8, 8), (1, 3, 5, 4)).item() == pytest.approx(9 / 2)
    assert patch_consistency(off[:, :, 1:3, 1:3], lr, (8, 8), (1, 1, 2, 2)).item() == 0  # no whole cell
    with pytest.raises(ConfigError, match="whole low-res cells"):
        patch_consistency(pred[:, :, :7], lr, (7, 8))
    plain, held, batch = twin_trainers(tmp_path, window=14, lr_consistency=2.0)
    base, _ = plain.objective.loss(plain, batch)
    loss, _ = held.objective.loss(held, batch)
    with torch.no_grad():
        box = window_box((SIZE, SIZE), 14, 0, 5)  # 14 px windows always hold a whole 7 px cell
        lr_f = held.features(batch["image"])
        term = patch_consistency(held.model(lr_f, batch["image"], window=box), held.core.channelnorm(lr_f), (SIZE, SIZE), box)
    assert loss.item() == pytest.approx(base.item() + 2.0 * term.item(), rel=1e-5)
    assert term.item() > 1e-3 * base.item()  # the term is there to see


def test_low_frequency_init_reaches_a_fresh_model(tmp_path):
    kw = dict(data=str(tmp_path / "photos"), out=str(tmp_path / "s1"), size=SIZE, window=12, batch_size=2, num_workers=0, progress=False)
    write_photos(tmp_path / "photos", n=2, side=64)
    weight = lambda cfg: Trainer(cfg, backbone=TinyBackbone()).core.upsampler.first_conv[1].weight  # noqa: E731
    fresh, blind = weight(build_config(1, "offline", **kw)), weight(build_config(1, "offline", low_frequency_init=9, **kw))
    dm, k = 5, 100  # 5 inputs x 20 frequencies in each of the sin and cos blocks
    for start in (0, k):
        assert (blind[:, start + 9 * dm : start + k] == 0).all() and (fresh[:, start + 9 * dm : start + k] != 0).all()
        assert (blind[:, start : start + 9 * dm] != 0).all()


def test_offline_preset_checks_its_window():
    from loftup.errors import ConfigError

    with pytest.raises(ConfigError, match="window"):
        build_config(1, "offline", data="x", out="y", size=32, window=32)
    with pytest.raises(ConfigError, match="oracle_scale"):
        build_config(1, "offline", data="x", out="y", oracle_scale=1.0)
    for bad in (dict(tv_weight=-1.0), dict(low_frequency_init=-2), dict(lr_consistency=-1.0)):
        with pytest.raises(ConfigError, match="tv_weight, low_frequency_init and lr_consistency"):
            build_config(1, "offline", data="x", out="y", **bad)
    for bad in (dict(target_blend=1.0), dict(target_blend=-0.1), dict(target_blend=0.3, target="pseudo_gt")):
        with pytest.raises(ConfigError, match="target_blend"):
            build_config(1, "offline", data="x", out="y", **bad)


@pytest.mark.parametrize("native", [False, True])
def test_a_bf16_run_on_a_cpu_without_bf16_warns(native, tmp_path, capsys, monkeypatch):
    from loftup.runtime import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    write_photos(tmp_path / "photos", n=2, side=64)
    cfg = build_config(1, "offline", data=str(tmp_path / "photos"), out=str(tmp_path / "s1"), size=SIZE, window=12,
                       batch_size=2, steps=1, num_workers=0, progress=False, precision="bf16")
    Trainer(cfg, backbone=TinyBackbone())
    assert ("warning: loftup: this CPU has no bf16 instructions" in capsys.readouterr().err) is not native
