"""THE data path: image -> backbone input -> backbone -> upsampler (guided by the image).

    pipe = Pipeline(backbone, upsampler)                 # input_size=None: the engine's rule
    image = prepare_image("cat.jpg", 448, pipe.mean, pipe.std)   # (1, 3, 448, W), normalised
    hr = pipe(image)                                     # (1, C, 448, W)

Every verb (upsample, eval, bench, demo, training's feature extraction) and every export
goes through this module: `TorchEngine` wraps `Pipeline`, the ONNX / TensorRT exporters trace
it. Nothing else resizes an image for a backbone (a test scans the package for that).

The rule, in three steps:
1. **The pipeline input is the guidance image**: the RGB image at the output size, values in
   [0, 1] normalised per channel as (x - mean) / std (ImageNet's by default). A file or PIL
   image becomes one with `prepare_image` (PIL bicubic to the output size, the only resize
   from the original pixels; the output size has the shorter side `size`, aspect kept).
2. **The backbone sees the guidance image resized** by `resize_for_backbone`: bilinear,
   align_corners=False, no antialiasing, on the normalised float tensor, to the size
   `backbone_input_size` gives (each side a multiple of the patch). It is an identity when
   the sides already are multiples.
3. **The upsampler** gets the raw backbone features and the guidance image. LoftUp answers at
   the guidance size; the other kinds at their official size (LiFT 2h x 2w, FeatUp-JBU
   16h x 16w, see loftup.model.kinds), and `fit_output` brings that to the guidance size,
   bilinearly (align_corners=False) - the one place an upsampler's output is resized, used by
   `Pipeline`, the PyTorch engine's upsampler form and every export.

The default (`DEFAULT_INPUT_SIZE = None`) is the same on every path - `upsample` with a
checkpoint or an engine, `eval`, `bench`, export's parity run, the Python API: the backbone sees
the guidance image at the output resolution, each side rounded down to whole patches. Why: the
paper's protocol evaluates at a resolution where the backbone sees the image at that
resolution, the shipped checkpoint was trained at that ratio, and it is the rule an exported
graph applies to any image size - so one photo gives one answer on every path. A smaller
backbone input (an int: its shorter side) is faster; it is an explicit option
(`upsample --input-size`, `loftup export --input-size`, recorded in the engine's metadata and
applied by its graph).

Why bilinear on tensors: it is the one resize that exports to ONNX / TensorRT with dynamic
sizes (a `Resize` node) and computes the same numbers in PyTorch and in every engine, so an
engine and its PyTorch reference see the same backbone pixels for any image size. Why no
antialiasing: the exporters' `Resize` has no antialiased bilinear on every opset we target;
with the default rule (`input_size=None`) the resize only rounds each side down by less than
one patch, where aliasing does not arise. An explicit smaller `input_size` (e.g. 224 for a 448
output) downsamples without a low-pass filter; that is the price of one rule for every verb.

`DEFAULT_SIZE` (448 px, the output's shorter side) is the other default `loftup upsample` and
`loftup.load` share.

Sizing (`backbone_input_size`): `input_size=None` keeps the guidance image's size, each side
rounded down to a multiple of the patch; an int scales the shorter side to it (aspect kept,
rounded half up in integer arithmetic, so an exported graph computes the same sizes), then rounds
each side down; an (H, W) pair is taken as it is, rounded down. Each side is at least one patch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import InputError, NonFiniteError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

InputSize = Union[int, Sequence[int], None]
DEFAULT_SIZE = 448  # the output's (= guidance image's) shorter side, in pixels, when none is given
DEFAULT_INPUT_SIZE: InputSize = None  # the backbone input rule when none is given: the guidance image, rounded down to whole patches


def output_size(height: int, width: int, size: InputSize) -> tuple[int, int]:
    """(H, W) of the output (= guidance image): shorter side `size`, aspect ratio kept;
    `size=None` keeps the image's own size; an (H, W) pair is taken as it is."""
    if size is None:
        return int(height), int(width)
    if not isinstance(size, int):
        h, w = (int(s) for s in size)
        return h, w
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def backbone_input_size(height: int, width: int, patch_size: int, input_size: InputSize = DEFAULT_INPUT_SIZE) -> tuple[int, int]:
    """(h, w) the backbone sees for a height x width guidance image (rule in the module doc)."""
    p = int(patch_size)
    if min(height, width) < p:
        raise InputError(f"image {width}x{height} px is smaller than one {p}x{p} backbone patch; use a larger image or output size")
    if input_size is None:
        h, w = height, width
    elif isinstance(input_size, int):
        if input_size < p:
            raise InputError(f"backbone input size {input_size} is smaller than one patch ({p} px); use at least {p}")
        h, w = scaled_sides(height, width, input_size, min(height, width))
    else:
        h, w = (int(s) for s in input_size)
    return max(p, h // p * p), max(p, w // p * p)


def scaled_sides(height, width, input_size: int, shorter):
    """(height, width) scaled so that `shorter` becomes `input_size`, each rounded half up.

    Integer arithmetic only, so the same expression runs on Python ints and, inside an export,
    on symbolic sizes (`shorter` = torch.sym_min(H, W)): engine and eager agree on every size.
    """
    n = int(input_size)
    return (2 * height * n + shorter) // (2 * shorter), (2 * width * n + shorter) // (2 * shorter)


def resize_for_backbone(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The one resize in front of a backbone: (B, 3, H, W) normalised -> (B, 3, *size), bilinear."""
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)


def backbone_input(image: torch.Tensor, patch_size: int, input_size: InputSize = DEFAULT_INPUT_SIZE) -> torch.Tensor:
    """The guidance image (B, 3, H, W) as the backbone sees it; no copy when nothing changes.

    Inside a traced export H and W are symbolic: the same integer arithmetic (`H // p * p`, or
    `scaled_sides` with torch.sym_min for an int `input_size`) becomes part of the graph, so
    the engine applies the rule of its metadata's `input_size` to every image size.
    """
    H, W = image.shape[-2:]
    if isinstance(H, int) and isinstance(W, int):
        hw = backbone_input_size(H, W, patch_size, input_size)
        return image if hw == (H, W) else resize_for_backbone(image, hw)
    p = int(patch_size)  # symbolic sizes (torch.export): always resized
    if isinstance(input_size, int):
        H, W = scaled_sides(H, W, input_size, torch.sym_min(H, W))
    elif input_size is not None:
        H, W = (int(s) for s in input_size)
    return resize_for_backbone(image, (H // p * p, W // p * p))  # an int input_size is at least one patch (checked)


def guidance_image(image: torch.Tensor, out_size: tuple[int, int] | None) -> torch.Tensor:
    """A normalised batch at the output size (bilinear), for callers that hold a tensor
    already (eval's datasets); files go through `prepare_image` instead."""
    if out_size is None or tuple(image.shape[-2:]) == tuple(out_size):
        return image
    return F.interpolate(image, size=tuple(out_size), mode="bilinear", align_corners=False)


def fit_output(hr: torch.Tensor, size) -> torch.Tensor:
    """An upsampler's output (B, C, h', w') at the guidance size (H, W): bilinear, align_corners=False.

    For LiFT (2h x 2w) and FeatUp-JBU (16h x 16w), whose official output size is not the
    guidance image's. At equal sizes bilinear resampling returns the input values exactly.
    """
    return F.interpolate(hr, size=tuple(size), mode="bilinear", align_corners=False)


def upsample_to_guidance(upsampler: nn.Module, lr_feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """`upsampler(lr_feats, image)` at the guidance image's size (B, C, H, W), whatever its kind.

    Modules that answer at the guidance size (LoftUp: `output_at_guidance_size = True`) are
    returned as they are; the others go through `fit_output`.
    """
    hr = upsampler(lr_feats, image)
    if getattr(upsampler, "output_at_guidance_size", True):
        return hr
    return fit_output(hr, image.shape[-2:])


def check_finite(x: torch.Tensor, what: str = "the upsampled features") -> torch.Tensor:
    """`x` itself, or NonFiniteError (one line) when it holds NaN or +-Inf: nothing non-finite is written."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(f"{what} hold {bad} NaN or infinite values of {x.numel()}; nothing was written for them - "
                             "check the weights, or run in fp32 (half precision can overflow)")
    return x


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) values in [0, 1] -> (x - mean) / std per channel."""
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    m = torch.as_tensor(mean, dtype=torch.float32).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32).view(shape)
    return (x - m) / s


def prepare_image(img, size: InputSize, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """The pipeline input for one image: (1, 3, H, W) float32, normalised, at `output_size(size)`.

    img: a PIL image, an image path, or an (H, W, 3) uint8 array. Resized with PIL bicubic
    straight from the original pixels (no resize when the size already matches).
    """
    from PIL import Image

    from .io import load_image, rgb_image

    if isinstance(img, (str, Path)):
        img = load_image(img)
    elif isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(f"expected an (H, W, 3) uint8 array, got {img.shape} {img.dtype}")
        img = Image.fromarray(img)
    elif not isinstance(img, Image.Image):
        raise InputError(f"expected a PIL image, a path or an array, got {type(img).__name__}")
    img = rgb_image(img)  # high-bit-depth images scaled, not clipped
    H, W = output_size(img.height, img.width, size)
    if (H, W) != (img.height, img.width):
        img = img.resize((W, H), resample=Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return normalize(x, mean, std).unsqueeze(0).contiguous()


class Pipeline(nn.Module):
    """Backbone + upsampler: guidance image (B, 3, H, W) normalised -> hr feats (B, C, H, W).

    input_size: the backbone input rule (see `backbone_input_size`); exported engines use
    None. `backbone_features` is the first half alone (raw features, before channel norm).
    upsampler: any kind (loftup.model.kinds); its output is brought to (H, W) by `fit_output`.
    """

    def __init__(self, backbone: nn.Module, upsampler: nn.Module, input_size: InputSize = DEFAULT_INPUT_SIZE):
        super().__init__()
        self.backbone = backbone
        self.upsampler = upsampler
        self.patch_size = int(backbone.patch_size)
        self.input_size = input_size

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(getattr(self.backbone, "mean", None) or IMAGENET_MEAN)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(getattr(self.backbone, "std", None) or IMAGENET_STD)

    def backbone_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) guidance image -> raw backbone features (B, C, h, w)."""
        return self.backbone(backbone_input(image, self.patch_size, self.input_size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return upsample_to_guidance(self.upsampler, self.backbone_features(image), image)


__all__ = [
    "DEFAULT_INPUT_SIZE",
    "DEFAULT_SIZE",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Pipeline",
    "backbone_input",
    "backbone_input_size",
    "check_finite",
    "fit_output",
    "guidance_image",
    "normalize",
    "output_size",
    "prepare_image",
    "resize_for_backbone",
    "scaled_sides",
    "upsample_to_guidance",
]
