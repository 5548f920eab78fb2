"""Image loading and the resize + normalise step in front of a backbone.

Sizing rule of `image_to_tensor` (both sides must be multiples of the patch size):
- `size=None`: keep the image's own size, each side rounded down to a multiple of the patch;
- `size=int`: scale so the shorter side is `size` (aspect ratio kept), then round each side
  down to a multiple of the patch (e.g. 448 on a 640x480 photo -> 588x448 for patch 14);
- `size=(H, W)`: exactly that size; both must be multiples of the patch.
The image is resized once, straight to the final size (no crop), so rounding may change
the aspect ratio by less than one patch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from loftup.errors import ConfigError, InputError, check_choice

RESAMPLE_MODES = ("bicubic", "bilinear", "lanczos", "nearest")


def resize_for_backbone(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A normalised batch (B, 3, H, W) resized to `size` (multiples of the patch) for a backbone.

    The one resize in front of a backbone on tensors: the exported pipeline
    (loftup.export.engine.LoftUpPipeline) and the eval feature runner both use it, so a
    pipeline engine and its PyTorch reference always see the same backbone input.
    """
    import torch.nn.functional as F

    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def load_image(path: str | Path):
    """Open an image file as an 8-bit RGB `PIL.Image` (see loftup.io.rgb_image); InputError if it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    from loftup.io import rgb_image

    try:
        with Image.open(path) as img:
            return rgb_image(img, str(path))  # 16-bit and float images are scaled, not clipped
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(
            f"cannot read {path} as an image ({type(exc).__name__}); "
            "pass a PNG/JPEG/... file that opens in an image viewer"
        ) from exc


def target_size(
    height: int, width: int, size: Union[int, Sequence[int], None], patch_size: int
) -> tuple[int, int]:
    """The (H, W) `image_to_tensor` resizes an height x width image to (see module doc)."""
    p = patch_size
    if size is None:
        h, w = height, width
    elif isinstance(size, int):
        if size < p:
            raise ConfigError(f"size {size} is smaller than one patch ({p} px); use size >= {p}")
        scale = size / min(height, width)
        h, w = round(height * scale), round(width * scale)
    else:
        h, w = (int(s) for s in size)
        if h % p or w % p or h < p or w < p:
            raise ConfigError(
                f"size {(h, w)} is not a multiple of the patch size {p}; "
                f"use e.g. {(max(p, h // p * p), max(p, w // p * p))}"
            )
        return h, w
    h, w = h // p * p, w // p * p
    if h < p or w < p:
        raise InputError(
            f"image {width}x{height} px is smaller than one {p}x{p} patch at this size; "
            "use a larger image or a larger `size`"
        )
    return h, w


def image_to_tensor(
    img,
    size: Union[int, Sequence[int], None],
    mean: Sequence[float],
    std: Sequence[float],
    patch_size: int,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resize (rule in the module doc) and normalise an image: (1, 3, H, W) float32.

    img: a PIL image, an image path, or an (H, W, 3) uint8 array. Values are scaled to
    [0, 1], then (x - mean) / std per channel. mode: PIL resampling filter.
    """
    from PIL import Image

    check_choice("resample mode", mode, RESAMPLE_MODES)
    if isinstance(img, (str, Path)):
        img = load_image(img)
    elif isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(
                f"expected an (H, W, 3) uint8 array, got {img.shape} {img.dtype}"
            )
        img = Image.fromarray(img)
    elif not isinstance(img, Image.Image):
        raise InputError(f"expected a PIL image, a path or an array, got {type(img).__name__}")
    img = img.convert("RGB")
    h, w = target_size(img.height, img.width, size, patch_size)
    if (h, w) != (img.height, img.width):
        resample = getattr(Image.Resampling, mode.upper())
        img = img.resize((w, h), resample=resample)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean_t) / std_t).unsqueeze(0).contiguous()
