"""`loftup upsample`: LoftUp features for images or folders, + PCA pictures.

Two sources of features, one data path (`loftup.pipeline`): `--checkpoint` (a `TorchEngine`:
backbone + LoftUp in PyTorch, opened by `export.engine.open_pipeline`, the function
`loftup.load` opens its module with) or `--engine` (an exported pipeline engine, ONNX or
TensorRT). Each image becomes the pipeline input with `prepare_image` (shorter side `size`,
`pipeline.DEFAULT_SIZE` by default); the backbone sees it through the pipeline's one resize rule
(`input_size`; by default `pipeline.DEFAULT_INPUT_SIZE`: the image rounded down to whole patches,
the rule an engine exported with default options applies; an engine applies the rule it was
exported with, `loftup export --input-size`).

A run is four short steps: `plan_upsample` (every check, nothing loaded or written), `open_upsampler`,
`upsample_batches` (prepared inputs of one size, run through the engine) and `write_batch`.

Data safety: an output never lands on an input file (checked before any work); inputs whose
names differ only by extension (`x.jpg`, `x.png`) get distinct outputs (`x_jpg.*`, `x_png.*`);
every file is written to a temporary name and renamed; in a folder, an unreadable image is
reported and skipped, the rest processed, and the run ends non-zero with a summary.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import ConfigError, InputError, LoftupError, check_choice
from ..io.samples import PREFIX, is_sample, load_sample
from ..pipeline import DEFAULT_SIZE
from ..runtime.devices import PRECISIONS, resolve_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
FORMATS = ("safetensors", "npy")


@dataclass
class UpsampleOptions:
    backbone: str = "dinov2_vits14"
    checkpoint: Optional[Path] = None  # a file, or "shipped" / "official" (loftup.model.registry); None: the shipped one
    engine: Optional[Path] = None  # an exported pipeline engine (.onnx / .plan) instead of a checkpoint
    random_init: bool = False
    weights: str = "default"
    size: int = DEFAULT_SIZE
    input_size: Optional[int] = None  # None: pipeline.DEFAULT_INPUT_SIZE with a checkpoint, the engine's own (recorded) rule with --engine
    out: Path = Path("out")
    format: str = "safetensors"
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 1
    attn_backend: str = "auto"
    cuda_graphs: bool = False  # --checkpoint only: replay one CUDA graph per input shape
    memory_budget: Optional[str] = None  # --checkpoint only: "auto" / None (loftup.runtime.budget) or a size such as 2GB
    threads: Optional[int] = None  # CPU threads (PyTorch intra-op, and ONNX Runtime's for --engine); None: PyTorch's default
    picture: bool = True
    features: bool = True  # False: pictures only (no feature files)
    force: bool = False  # overwrite output files that exist already
    seed: int = 0


@dataclass
class Item:
    rel: Path  # output path relative to the output folder, without suffix
    load: Callable  # -> PIL RGB image
    size: tuple[int, int]  # (H, W) of the original image
    source: Optional[Path] = None  # the input file (None for sample:NAME)


@dataclass
class UpsampleResult:
    """What a run wrote (files that exist) and which inputs failed, with the reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    weights: str = ""  # which upsampler weights (or engine) computed the features

    def summary(self, out: Path, what: str) -> str:
        line = f"wrote {len(self.written)} {what}(s) to {out}" + (f" ({self.weights})" if self.weights else "")
        if self.failed:
            shown = "; ".join(f"{name}: {why}" for name, why in self.failed[:3])
            more = f" and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
            line += f"; {len(self.failed)} input(s) failed ({shown}{more})"
        return line


def _read_size(file: Path) -> tuple[int, int]:
    """(H, W) from the header; InputError when the file is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read {file} as an image ({type(exc).__name__}); remove it or pass a PNG/JPEG file") from None
    return height, width


def output_names(files: list[Path], root: Path) -> list[Path]:
    """Output stems relative to the output folder: the relative path without its suffix, or, when
    two inputs in one folder share a stem (x.jpg, x.png), with the suffix folded in (x_jpg, x_png)."""
    rels = [f.relative_to(root) for f in files]
    stems = [r.with_suffix("") for r in rels]
    clash = {s for s in stems if stems.count(s) > 1}
    return [s.with_name(f"{s.name}_{r.suffix.lstrip('.').lower()}") if s in clash else s for s, r in zip(stems, rels)]


def collect_inputs(spec: str | Path, patch_size: int, failed: list | None = None) -> list[Item]:
    """The images named by a file, a folder (recursive) or `sample:NAME`; headers checked up front.

    A single file that cannot be read raises InputError; in a folder such files go to `failed`
    (name, reason) and the rest are returned.
    """
    from ..io import load_image

    if is_sample(str(spec)):
        name = str(spec)[len(PREFIX):]
        img = load_sample(name)
        return [Item(Path(name), lambda img=img: img, (img.height, img.width))]
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(f"input {path} does not exist; give an image file, a folder of images or sample:NAME")
    if not path.is_dir():
        return [Item(Path(path.stem), lambda: load_image(path), _read_size(path), path)]
    files = image_files(path, failed)
    if not files and not failed:
        raise InputError(f"no images found in {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
    items = []
    for file, rel in zip(files, output_names(files, path)):
        try:
            size = _read_size(file)
        except InputError as exc:
            if failed is None:
                raise
            failed.append((str(file.relative_to(path)), str(exc)))
            continue
        if min(size) < patch_size and failed is not None:
            failed.append((str(file.relative_to(path)), f"{size[1]}x{size[0]} px is smaller than one {patch_size}x{patch_size} patch"))
            continue
        items.append(Item(rel, lambda file=file: load_image(file), size, file))
    return items


def image_files(root: Path, failed: list | None = None) -> list[Path]:
    """Image files under `root` (recursive; links to files followed, links to folders not), sorted.

    Entries with an image suffix that cannot be read - a broken link, a link loop - and folders
    that cannot be listed go to `failed` (name, reason) like unreadable images, or raise InputError
    when `failed` is None; they are never skipped without a word.
    """
    found, problems = [], []

    def unlisted(exc: OSError) -> None:
        problems.append((Path(exc.filename), f"cannot list this folder ({exc.strerror}); check its permissions"))

    for folder, _, names in os.walk(root, onerror=unlisted):
        for name in names:
            file = Path(folder) / name
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if file.is_file():
                found.append(file)
            elif file.is_symlink():
                problems.append((file, _link_problem(file)))
    for file, why in sorted(problems):
        if failed is None:
            raise InputError(f"{file}: {why}")
        failed.append((str(file.relative_to(root)) if file != root else str(file), why))
    return sorted(found)


def _link_problem(link: Path) -> str:
    """Why a link with an image name is not an image file (it was checked not to be a regular file)."""
    try:
        link.resolve(strict=True)
    except RuntimeError:
        return "a symbolic link loop; remove it"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop; remove it"
        return f"a broken link to {os.readlink(link)} ({exc.strerror}); fix or remove it"
    return "a link to something that is not a file; remove it"


def output_files(item: Item, out: Path, opts: UpsampleOptions) -> list[Path]:
    """Every file `item` will write."""
    target = out / item.rel
    files = [target.with_suffix(".npy" if opts.format == "npy" else ".safetensors")] if opts.features else []
    return files + ([target.with_suffix(".png")] if opts.picture else [])


def check_outputs(items: list[Item], out: Path, opts: UpsampleOptions) -> None:
    """No output may resolve onto an input file (e.g. --out set to the input folder), nor, without
    --force, onto any file that exists already (this run has written nothing yet)."""
    from ..io import refuse_existing

    inputs = {item.source.resolve(): item.source for item in items if item.source is not None}
    for item in items:
        for file in output_files(item, out, opts):
            if file.resolve() in inputs:
                raise InputError(f"--out {out} would overwrite the input image {inputs[file.resolve()]}; choose another --out")
    if not opts.force:
        refuse_existing([file for item in items for file in output_files(item, out, opts)], "--out")


def prepare_out_dir(out: Path) -> None:
    """Create the output folder and prove it is writable, or raise one clear InputError."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".loftup-write-test"):
            pass
    except OSError as e:
        raise InputError(f"cannot write to output folder {out}: {e.strerror or e}; choose another --out") from None


def save_features(path: Path, hr: torch.Tensor, lr: torch.Tensor | None, fmt: str) -> Path:
    from safetensors.torch import save_file

    from ..io import atomic_write

    if fmt == "npy":
        path = path.with_suffix(".npy")
        array = hr.float().numpy() if hr.dtype == torch.bfloat16 else hr.numpy()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, array)

        atomic_write(path, write)
    else:
        path = path.with_suffix(".safetensors")
        tensors = {"hr_feats": hr.contiguous(), **({"lr_feats": lr.contiguous()} if lr is not None else {})}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"layout": "CHW"}))
    return path


def save_picture(path: Path, image, lr_normed: torch.Tensor | None, hr: torch.Tensor) -> Path:
    from ..io import atomic_write
    from .pictures import pca_panel

    path = path.with_suffix(".png")
    H, W = hr.shape[-2:]
    panel = pca_panel(np.asarray(image.resize((W, H))), None if lr_normed is None else lr_normed.float(), hr.float())
    atomic_write(path, lambda tmp: panel.save(tmp, format="PNG"))
    return path


def check_options(opts: UpsampleOptions) -> None:
    """Cheap checks first: nothing is loaded or written before the options are known good."""
    from ..kernels import BACKENDS

    check_choice("feature format", opts.format, FORMATS)
    check_choice("dtype", opts.dtype, PRECISIONS)
    check_choice("attention backend", opts.attn_backend, BACKENDS)
    for name in ("size", "input_size", "batch_size", "threads"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if not opts.features and not opts.picture:
        raise ConfigError("--no-features with --no-picture would write nothing; keep one of them")
    if opts.engine is not None:
        _check_engine_options(opts)
        return
    from ..model.registry import check_upsampler

    check_upsampler(upsampler_arg(opts), opts.backbone, opts.weights)  # no weights for this backbone: said before any work
    from ..runtime.budget import explicit_memory_budget

    explicit_memory_budget(opts.memory_budget)  # a bad value is reported before anything loads


def _check_engine_options(opts: UpsampleOptions) -> None:
    """--engine: the options that apply to --checkpoint only are refused, each with its reason."""
    clash = [f for f, v in (("--checkpoint", opts.checkpoint), ("--random-init", opts.random_init)) if v]
    if clash:
        raise ConfigError(f"--engine and {clash[0]} exclude each other; upsample with one of them")
    if opts.dtype != "fp32":
        raise ConfigError("--dtype applies to --checkpoint; an engine's precision is fixed when it is exported (loftup export --precision)")
    if opts.cuda_graphs:
        raise ConfigError("--cuda-graphs applies to --checkpoint (PyTorch); an exported engine's runtime schedules the GPU itself")
    if opts.memory_budget not in (None, "auto"):
        raise ConfigError("--memory-budget applies to --checkpoint (PyTorch tiling); an exported ONNX engine bounds its "
                          "memory by its query blocks")


def upsampler_arg(opts: UpsampleOptions):
    """What --checkpoint / --random-init name, as `open_pipeline`'s `upsampler=` (None: the shipped checkpoint)."""
    if opts.random_init:
        if opts.checkpoint is not None:
            raise ConfigError("--checkpoint and --random-init exclude each other; pick one")
        return "random"
    return opts.checkpoint


def open_upsampler(opts: UpsampleOptions, device: torch.device):
    """The engine that computes the features: `open_pipeline` (backbone + upsampler in PyTorch, as
    `loftup.load` opens it), or the exported pipeline engine given with --engine.
    Returns (engine, mean, std, patch size)."""
    from ..export.engine import load_engine, open_pipeline

    if opts.engine is not None:
        engine = load_engine(opts.engine, device=str(device), threads=opts.threads)
        md = engine.metadata
        if md.scope != "pipeline":
            raise ConfigError(f"{Path(opts.engine).name} is a {md.scope} engine; upsample --engine runs pipeline engines "
                              "(export with --scope pipeline), or use --checkpoint")
        check_engine_input_size(Path(opts.engine).name, md.input_size, opts.input_size)
        return engine, tuple(md.mean), tuple(md.std), int(md.patch_size or 1)
    engine = open_pipeline(opts.backbone, upsampler_arg(opts), weights=opts.weights, device=str(device), precision=opts.dtype,
                           input_size=opts.input_size, attn_backend=opts.attn_backend, cuda_graphs=opts.cuda_graphs,
                           memory_budget=opts.memory_budget, seed=opts.seed)
    bb = engine.backbone
    return engine, tuple(bb.mean), tuple(bb.std), int(bb.patch_size)


def check_engine_input_size(name: str, recorded, asked) -> None:
    """--input-size with an engine: only the rule the engine was exported with (its graph applies it)."""
    if asked is not None and asked != recorded:
        rule = f"input size {recorded}" if recorded is not None else "input (the image rounded down to whole patches)"
        raise ConfigError(f"engine {name} applies the backbone {rule} it was exported with; drop --input-size {asked}, or export "
                          f"again with `loftup export --input-size {asked}`")


def upsample_batch(engine, images: torch.Tensor, picture: bool):
    """(hr, lr or None, channel-normed lr or None) for a batch of pipeline inputs."""
    from ..pipeline import check_finite

    pipeline = getattr(engine, "pipeline", None)
    if pipeline is None:  # an exported engine: only the output
        return check_finite(engine(images)), None, None
    lr = engine.backbone_features(images)
    hr = check_finite(engine(lr, images))
    lr_normed = None
    if picture:
        norm = getattr(engine.model, "channelnorm", None)  # LiFT and the no-norm FeatUp-JBU have none
        with torch.no_grad():
            lr_normed = (norm(lr.to(engine.device)) if norm is not None else lr).float()
    return hr, lr, lr_normed


@dataclass
class UpsamplePlan:
    """What `plan_upsample` checked: the device, the output folder, the inputs and the patch size."""

    device: torch.device
    out: Path
    items: list[Item]
    patch: int


def plan_upsample(inputs: str | Path, opts: UpsampleOptions, result: UpsampleResult) -> UpsamplePlan:
    """Every check before any loading or writing: options, device, output folder, inputs and their
    sizes, no output onto an input. Unreadable files in a folder go to `result.failed`."""
    from ..backbones import BACKBONES, list_backbones

    check_options(opts)
    device = resolve_device(opts.device)
    if opts.cuda_graphs and device.type != "cuda":
        raise ConfigError("--cuda-graphs needs --device cuda (CUDA graphs replay GPU work)")
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot write to output folder {out}: it is a file; choose another --out")
    patch = 1  # with --engine: checked against the engine's own patch once it is open
    if opts.engine is None:
        check_choice("backbone", opts.backbone, list_backbones())
        patch = BACKBONES[opts.backbone].patch_size if opts.backbone in BACKBONES else 1  # registered ones: checked once loaded
        if opts.input_size is not None and opts.input_size < patch:
            raise ConfigError(f"--input-size {opts.input_size} is smaller than one backbone patch ({patch} px); use at least {patch}")
    items = collect_inputs(inputs, patch, result.failed)
    if len(items) == 1 and items[0].source is not None and min(items[0].size) < patch:
        raise InputError(f"image {items[0].source.name} is {items[0].size[1]}x{items[0].size[0]} px, smaller than one "
                         f"{patch}x{patch} patch; use a larger image")
    check_outputs(items, out, opts)
    return UpsamplePlan(device, out, items, patch)


def prepared_batches(items: list[Item], opts: UpsampleOptions, mean, std, patch: int, failed: list):
    """Lists of (item, PIL image, pipeline input) of one size, at most `opts.batch_size` long;
    an input that cannot be prepared goes to `failed` (a single input raises)."""
    from ..pipeline import prepare_image

    pending: list = []
    for item in items:
        try:
            image = item.load()
            x = prepare_image(image, opts.size, mean, std)
            if min(x.shape[-2:]) < patch:
                raise InputError(f"{x.shape[-1]}x{x.shape[-2]} px output is smaller than one {patch}x{patch} patch; use a larger --size")
        except LoftupError as exc:
            if len(items) == 1:
                raise
            failed.append((str(item.rel), str(exc)))
            continue
        if pending and pending[0][2].shape != x.shape:
            yield pending
            pending = []
        pending.append((item, image, x))
        if len(pending) == opts.batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def upsample_batches(engine, plan: UpsamplePlan, opts: UpsampleOptions, mean, std, patch: int, result: UpsampleResult):
    """(batch, (hr, lr, lr_normed)) per batch that ran; a batch the engine refuses (e.g. a size
    outside its range) goes to `result.failed`, the rest go on (a single input raises)."""
    for batch in prepared_batches(plan.items, opts, mean, std, patch, result.failed):
        try:
            outputs = upsample_batch(engine, torch.cat([x for _, _, x in batch]).to(plan.device), opts.picture)
        except LoftupError as exc:
            if len(plan.items) == 1:
                raise
            result.failed.extend((str(item.rel), str(exc)) for item, _, _ in batch)
            continue
        yield batch, outputs


def write_batch(batch, outputs, out: Path, opts: UpsampleOptions, result: UpsampleResult) -> None:
    """The feature files and pictures of one batch, each written atomically."""
    hr, lr, lr_normed = outputs
    for i, (item, image, _) in enumerate(batch):
        target = out / item.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if opts.features:
            result.written.append(save_features(target, hr[i].cpu(), lr[i].cpu() if lr is not None else None, opts.format))
        if opts.picture:
            picture = save_picture(target, image, lr_normed[i].cpu() if lr_normed is not None else None, hr[i].cpu())
            if not opts.features:
                result.written.append(picture)


def run_upsample(inputs: str | Path, opts: UpsampleOptions, progress: bool = True) -> UpsampleResult:
    """Upsample every image named by `inputs`; returns the files written (feature files, or the
    pictures when opts.features is False) and the inputs that failed."""
    from ..model.checkpoint import describe_weights

    result = UpsampleResult()
    plan = plan_upsample(inputs, opts, result)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    engine, mean, std, patch = open_upsampler(opts, plan.device)
    result.weights = f"engine {Path(opts.engine).name}" if opts.engine is not None else describe_weights(engine.model)
    prepare_out_dir(plan.out)
    bar = _progress(len(plan.items)) if progress and len(plan.items) > 1 else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("upsampling", total=len(plan.items)) if bar else None
        for batch, outputs in upsample_batches(engine, plan, opts, mean, std, patch, result):
            write_batch(batch, outputs, plan.out, opts, result)
            if bar:
                bar.advance(task, len(batch))
    result.written = [p for p in result.written if p.exists()]
    return result


def _progress(total: int):
    """A rich progress bar for folders."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
