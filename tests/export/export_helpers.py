"""Constants and builders shared by the export tests (a uniquely named module: several test
folders have a conftest.py, so `from conftest import ...` would be ambiguous)."""

from __future__ import annotations

import dataclasses

import torch

C = 32
SIZES = (28, 56, 112)  # min / opt / max image side of the test exports
MAX_BATCH = 4
# shapes never used when exporting (the tracer's example shapes come from the middle of the
# range and are distinct from these): odd sizes, non-square, batch 2
PARITY_SHAPES = [(1, 57, 57), (2, 61, 87), (1, 111, 29)]


def make_model(feat_dim: int = C, seed: int = 0):
    from loftup.model import LoftUp, LoftUpConfig

    torch.manual_seed(seed)
    model = LoftUp(LoftUpConfig(feat_dim=feat_dim))
    with torch.no_grad():  # trained-looking BatchNorm statistics, so folding is not a no-op
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def make_backbone(registers: int = 0):
    from loftup.backbones import DinoViT, ViTConfig, get_spec
    from loftup.backbones.registry import Backbone

    cfg = ViTConfig(embed_dim=C, depth=1, num_heads=2, img_size=14 * 6)
    if registers:
        cfg = cfg.with_registers(registers)
    spec = dataclasses.replace(get_spec("dinov2_vits14"), name="dinov2_tiny", embed_dim=C, config=cfg)
    vit = DinoViT(cfg)
    vit.init_weights(torch.Generator().manual_seed(1))
    return Backbone(spec, vit, "random init (seed 1)")


def counted_macs(model, lr_shape: tuple, image_shape: tuple, **forward_kwargs) -> float:
    """Multiply-adds of one forward pass as torch's FlopCounterMode counts them (matmuls,
    convolutions, attention; FLOPs / 2), run on the meta device: no memory, no arithmetic."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.to("meta").eval()
    lr, image = torch.empty(lr_shape, device="meta"), torch.empty(image_shape, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(lr, image, **forward_kwargs)
    return counter.get_total_flops() / 2
