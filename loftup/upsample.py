"""`loftup upsample`: backbone features -> LoftUp features for images or folders, + PCA pictures.

Sizes: the backbone sees the image with its shorter side at `input_size` (sides rounded down to
a multiple of the patch); LoftUp's output, and so its guidance image, has its shorter side at
`size` (aspect ratio kept). Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .devices import resolve_device
from .errors import ConfigError, InputError, check_choice
from .samples import PREFIX, is_sample, load_sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
FORMATS = ("safetensors", "npy")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class UpsampleOptions:
    backbone: str = "dinov2_vits14"
    checkpoint: Optional[Path] = None
    random_init: bool = False
    weights: str = "default"
    size: int = 448
    input_size: int = 224
    out: Path = Path("out")
    format: str = "safetensors"
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 1
    attn_backend: str = "auto"
    picture: bool = True
    features: bool = True  # False: pictures only (no feature files)
    seed: int = 0


@dataclass
class Item:
    rel: Path  # output path relative to the output folder, without suffix
    load: Callable  # -> PIL RGB image
    size: tuple[int, int]  # (H, W) of the original image


def autocast(device: torch.device, dtype: str):
    """Autocast context for bf16/fp16 (weights stay fp32), nothing for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def collect_inputs(spec: str | Path, patch_size: int) -> list[Item]:
    """The images named by a file, a folder (recursive) or `sample:NAME`; headers checked up front."""
    from PIL import Image, UnidentifiedImageError

    from .backbones import load_image

    if is_sample(str(spec)):
        name = str(spec)[len(PREFIX):]
        img = load_sample(name)
        items = [Item(Path(name), lambda img=img: img, (img.height, img.width))]
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise InputError(f"input {path} does not exist; give an image file, a folder of images or sample:NAME")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"no images found in {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
            rels = [f.relative_to(path).with_suffix("") for f in files]
        else:
            files, rels = [path], [Path(path.stem)]
        items = []
        for file, rel in zip(files, rels):
            try:
                with Image.open(file) as im:
                    width, height = im.size
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise InputError(f"cannot read {file} as an image ({type(exc).__name__}); remove it or pass a PNG/JPEG file") from None
            items.append(Item(rel, lambda file=file: load_image(file), (height, width)))
    for item in items:
        if min(item.size) < patch_size:
            raise InputError(
                f"image {item.rel} is {item.size[1]}x{item.size[0]} px, smaller than one {patch_size}x{patch_size} patch; use a larger image"
            )
    return items


def output_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with the shorter side `size`, aspect ratio kept."""
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def prepare_out_dir(out: Path) -> None:
    """Create the output folder and prove it is writable, or raise one clear InputError."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".loftup-write-test"):
            pass
    except OSError as e:
        raise InputError(f"cannot write to output folder {out}: {e.strerror or e}; choose another --out") from None


def build_model(opts: UpsampleOptions, feat_dim: int, device: torch.device):
    from .model import LoftUp, LoftUpConfig, load_checkpoint

    if opts.checkpoint is not None:
        model = load_checkpoint(opts.checkpoint, feat_dim=feat_dim, attn_backend=opts.attn_backend)
        if model.cfg.backbone and model.cfg.backbone != opts.backbone:
            import warnings

            warnings.warn(f"checkpoint was trained on {model.cfg.backbone!r} features, running it on {opts.backbone!r}")
    else:
        torch.manual_seed(opts.seed)
        model = LoftUp(LoftUpConfig(feat_dim=feat_dim, backbone=opts.backbone, attn_backend=opts.attn_backend)).eval()
    return model.to(device)


def save_features(path: Path, hr: torch.Tensor, lr: torch.Tensor, fmt: str) -> Path:
    from safetensors.torch import save_file

    from .io import atomic_write

    if fmt == "npy":
        path = path.with_suffix(".npy")
        array = hr.float().numpy() if hr.dtype == torch.bfloat16 else hr.numpy()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, array)

        atomic_write(path, write)
    else:
        path = path.with_suffix(".safetensors")
        tensors = {"hr_feats": hr.contiguous(), "lr_feats": lr.contiguous()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"layout": "CHW"}))
    return path


def save_picture(path: Path, image, lr_normed: torch.Tensor, hr: torch.Tensor) -> Path:
    from .io import atomic_write
    from .viz import pca_panel

    path = path.with_suffix(".png")
    H, W = hr.shape[-2:]
    panel = pca_panel(np.asarray(image.resize((W, H))), lr_normed.float(), hr.float())
    atomic_write(path, lambda tmp: panel.save(tmp, format="PNG"))
    return path


def run_upsample(inputs: str | Path, opts: UpsampleOptions, progress: bool = True) -> list[Path]:
    """Upsample every image named by `inputs`; returns the files written (feature files, or the
    pictures when opts.features is False)."""
    from .backbones import create_backbone, get_spec, image_to_tensor
    from .kernels import BACKENDS

    # cheap checks first: nothing is loaded or written before the options are known good
    check_choice("feature format", opts.format, FORMATS)
    check_choice("dtype", opts.dtype, DTYPES)
    check_choice("attention backend", opts.attn_backend, BACKENDS)
    for name in ("size", "input_size", "batch_size"):
        if getattr(opts, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(opts, name)}")
    if not opts.features and not opts.picture:
        raise ConfigError("--no-features with --no-picture would write nothing; keep one of them")
    if opts.checkpoint is None and not opts.random_init:
        raise ConfigError(
            "no trained LoftUp weights given: pass --checkpoint PATH (an official loftup pytorch_model.bin or a "
            "`loftup train` checkpoint), or --random-init to try the pipeline with an untrained upsampler"
        )
    spec = get_spec(opts.backbone)
    device = resolve_device(opts.device)
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot write to output folder {out}: it is a file; choose another --out")
    items = collect_inputs(inputs, spec.patch_size)

    backbone = create_backbone(opts.backbone, weights=opts.weights, device=device)
    model = build_model(opts, backbone.embed_dim, device)
    prepare_out_dir(out)

    written: list[Path] = []
    bar = _progress(len(items)) if progress and len(items) > 1 else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("upsampling", total=len(items)) if bar else None
        pending: list = []

        def flush() -> None:
            if not pending:
                return
            x = torch.cat([p[2] for p in pending]).to(device)
            g = torch.cat([p[3] for p in pending]).to(device)
            with torch.no_grad(), autocast(device, opts.dtype):
                lr = backbone(x)
                hr = model(lr, g)
                lr_normed = model.channelnorm(lr) if opts.picture else None
            for i, (item, image, _, _) in enumerate(pending):
                target = out / item.rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if opts.features:
                    written.append(save_features(target, hr[i].cpu(), lr[i].cpu(), opts.format))
                if opts.picture:
                    picture = save_picture(target, image, lr_normed[i].cpu(), hr[i].cpu())
                    if not opts.features:
                        written.append(picture)
                if bar:
                    bar.advance(task)
            pending.clear()

        for item in items:
            image = item.load()
            x = image_to_tensor(image, opts.input_size, spec.mean, spec.std, spec.patch_size)
            g = image_to_tensor(image, output_size(image.height, image.width, opts.size), spec.mean, spec.std, 1)
            if pending and (pending[0][2].shape != x.shape or pending[0][3].shape != g.shape):
                flush()
            pending.append((item, image, x, g))
            if len(pending) == opts.batch_size:
                flush()
        flush()
    return written


def _progress(total: int):
    """A rich progress bar for folders."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
