"""Presets, YAML files and overrides; the feature cache."""

import pytest
import torch

from loftup.errors import ConfigError
from loftup.train.features import FeatureExtractor
from loftup.train.presets import TrainConfig, build_config


def test_paper_and_released_presets():
    p1, p2 = build_config(1, "paper"), build_config(2, "paper")
    assert (p1.optimizer, p1.lr, p1.batch_size, p1.alpha, p1.size) == ("adamw", 1e-3, 8, 0.8, 224)
    assert (p2.lr, p2.ema_decay, p2.ema_every, p2.crops_per_image, p2.teacher_scale, p2.distill_loss) == (
        1e-4, 0.99, 10, 2, (2.0, 4.0), "affinity")
    assert p2.sizes == [224] and p2.teacher_side(224) == 224
    r1, r2 = build_config(1, "released"), build_config(2, "released")
    assert (r1.optimizer, r1.lr, r1.target_proj_dim) == ("nadam", 1e-4, 64)
    assert (r2.optimizer, r2.lr, r2.teacher_alpha, r2.teacher_size) == ("adamw", 1e-3, 0.5, 896)
    assert r2.sizes == [224, 336, 448, 518] and r2.distill_weight == 20.0


def test_precedence_preset_yaml_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.005\nbatch-size: 4\nteacher_scale: [2.5, 3]\nstudent_sizes: 28,42\npreset: released\n")
    cfg = build_config(2, None, y, batch_size=2, hflip="true")
    assert cfg.preset == "released" and cfg.lr == 0.005 and cfg.batch_size == 2 and cfg.hflip is True
    assert cfg.teacher_scale == (2.5, 3.0) and cfg.sizes == [28, 42] and cfg.teacher_alpha == 0.5
    # round trip through the saved form
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad, match", [
    (dict(lrr=1.0), "did you mean 'lr'"),
    (dict(batch_size="many"), "batch_size"),
    (dict(optimizer="adamx"), "adamw"),
    (dict(alpha=1.5), "alpha"),
    (dict(teacher_scale=(4, 2)), "teacher_scale"),
])
def test_bad_options(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_config(1, "paper", **bad)


def test_stage_required_and_checked(tmp_path):
    with pytest.raises(ConfigError, match="--stage"):
        build_config(None, "paper")
    with pytest.raises(ConfigError, match="stage"):
        build_config(3, "paper")
    with pytest.raises(ConfigError, match="preset"):
        build_config(1, "papr")


def test_feature_cache_hits_and_matches(tmp_path, tiny_backbone):
    x = torch.randn(3, 3, 28, 28)
    plain = FeatureExtractor(tiny_backbone)(x)
    fx = FeatureExtractor(tiny_backbone, cache_dir=tmp_path / "cache")
    a = fx(x)
    b = fx(torch.cat([x[:2], torch.randn(1, 3, 28, 28)]))
    assert torch.allclose(a, plain) and torch.equal(b[:2], a[:2])
    assert (fx.hits, fx.misses) == (2, 4)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4
