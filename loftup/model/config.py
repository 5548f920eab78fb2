"""LoftUpConfig: every knob of the upsampler, including the supplement's ablations (Table B.3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, check_choice

LR_PE_TYPES = ("sine", "learnable", "none", "rope")
MINMAX_MODES = ("per_image", "batch")
TILING_MODES = ("auto", "never", "always")


@dataclass
class LoftUpConfig:
    """Hyper-parameters of a LoftUp upsampler. Defaults = the official hub models.

    feat_dim: C, channels of the backbone features (384 DINOv2-S, 512 CLIP-B, 768 DINOv2-B).
    lr_pe: positional encoding of the low-res tokens. "sine" (official: 20 learned-phase
        Fourier channels concatenated, so the token width is D = C + 20), "learnable" (a
        learned C x lr_pe_size^2 grid, bicubically resized and added), "none", or "rope"
        (2-D rotary embedding of queries and keys inside attention). Only "sine" widens D.
    image_conv_kernel: kernel of the two convs on the image Fourier features (3 official, 1).
    minmax: "per_image" (default, batch-independent) or "batch" (the official behaviour:
        per-channel extrema over the whole batch).
    attn_backend: "auto" | "reference" | "sdpa" | "triton" (see loftup.kernels).
    tiling: "auto" (tile outputs above tile_threshold pixels), "never" or "always".
    """

    feat_dim: int = 384
    num_blocks: int = 2
    num_heads: int = 4
    n_freqs: int = 20
    lr_n_freqs: int = 5
    lr_pe: str = "sine"
    lr_pe_size: int = 16
    image_conv_kernel: int = 3
    minmax: str = "per_image"
    attn_backend: str = "auto"
    attn_budget_mb: int = 256
    tiling: str = "auto"
    tile_size: int = 256
    tile_threshold: int = 512 * 512
    backbone: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("lr_pe", self.lr_pe, LR_PE_TYPES)
        check_choice("minmax mode", self.minmax, MINMAX_MODES)
        check_choice("tiling mode", self.tiling, TILING_MODES)
        if self.image_conv_kernel not in (1, 3):
            raise ConfigError(f"image_conv_kernel must be 1 or 3, got {self.image_conv_kernel}")
        for name in ("feat_dim", "num_blocks", "num_heads", "n_freqs", "lr_n_freqs", "lr_pe_size", "tile_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.token_dim % self.num_heads:
            raise ConfigError(
                f"token width {self.token_dim} (feat_dim {self.feat_dim} + {self.lr_pe_dim} PE channels) "
                f"is not divisible by num_heads={self.num_heads}; pick another num_heads"
            )

    @property
    def lr_pe_dim(self) -> int:
        """Channels the low-res positional encoding concatenates to the features (sine only)."""
        return 2 * 2 * self.lr_n_freqs if self.lr_pe == "sine" else 0

    @property
    def token_dim(self) -> int:
        """D: width of queries and key/value tokens."""
        return self.feat_dim + self.lr_pe_dim

    @property
    def head_dim(self) -> int:
        return self.token_dim // self.num_heads

    @property
    def image_feat_dim(self) -> int:
        """Channels of the image Fourier features: sin + cos of 5 inputs x n_freqs, plus RGB."""
        return 2 * 5 * self.n_freqs + 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoftUpConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown LoftUp config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "LoftUpConfig":
        return dataclasses.replace(self, **changes)
