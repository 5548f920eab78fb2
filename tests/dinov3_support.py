"""A registry row swapped for a tiny DINOv3 of the same family, so verb tests run `--backbone
dinov3_vits16` end to end in seconds (tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

import dataclasses

TINY = dict(embed_dim=32, depth=1, num_heads=2)


def use_tiny_dinov3(monkeypatch, name: str = "dinov3_vits16", **config):
    """Replace registry row `name` by the same row with a tiny config (random weights: seeded)."""
    import loftup.backbones.registry as registry
    from loftup.backbones.dinov3 import DINOv3Config

    cfg = DINOv3Config(**{**TINY, **config})
    row = dataclasses.replace(registry.BACKBONES[name], config=cfg, embed_dim=cfg.embed_dim)
    monkeypatch.setitem(registry.BACKBONES, name, row)
    return row
