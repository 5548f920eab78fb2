"""`loftup bench`: parse, call `loftup.bench.harness.run_bench`, print.

Only typer and the stdlib at module level: the CLI imports this module on every start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, LoftupError


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"--{what} takes comma-separated integers, e.g. 224,448; got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--{what} needs positive integers, got {text!r}")
    return values


def bench_command(
    checkpoint: Optional[Path] = typer.Option(None, help="LoftUp weights to benchmark (default: the checkpoint shipped for the backbone, if any)."),
    random_init: bool = typer.Option(False, "--random-init", help="Benchmark an untrained upsampler (latency does not depend on the weights)."),
    upsampler: Optional[str] = typer.Option(
        None, "--upsampler", help="Kind: loftup, lift or featup_jbu (default: what --checkpoint holds; loftup for --random-init)."
    ),
    backbone: str = typer.Option("dinov2_vits14", help="Backbone whose channels and patch size set the workload (its weights are not loaded)."),
    sizes: str = typer.Option("224,448,896", help="Output sizes (square), comma-separated."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Batch sizes, comma-separated."),
    precisions: Optional[str] = typer.Option(None, help="fp32, bf16, fp16, int8 (ONNX Runtime CPU), comma-separated (default: "
                                             "fp32,bf16,int8; on a CPU without bf16 instructions fp32,int8)."),
    backends: str = typer.Option(
        "all", help="Comma-separated: torch-reference, torch-sdpa, torch-compile, triton, onnxruntime (every provider) "
        "or onnxruntime-cpu/-cuda/-tensorrt, tensorrt; or all."
    ),
    warmup: int = typer.Option(1, help="Untimed runs before timing (compilation happens here)."),
    repeats: int = typer.Option(5, help="Timed runs (fewer if --max-seconds would be exceeded)."),
    max_seconds: float = typer.Option(60.0, "--max-seconds", help="Time budget per row for the timed runs."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch and ONNX Runtime (default: PyTorch's, one per "
                                          "physical core; intra-op only, inter-op 1)."),
    memory_budget: str = typer.Option("auto", "--memory-budget", help="Peak process memory the PyTorch rows' tiling keeps "
                                      "under: a size such as 2GB, or auto (resident memory at the run + 1 GB, or + half of MemAvailable if less)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(Path("bench_results"), help="Output folder (or a .json path); a PNG plot is written next to the JSON."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="PyTorch rows replay one CUDA graph per input shape (CUDA only)."),
    profile: bool = typer.Option(False, "--profile", help="Also a per-stage time table (torch.profiler) for every PyTorch row."),
    attention: bool = typer.Option(False, "--attention", help="Instead of the upsampler: measure the attention backends on this GPU "
                                   "and write the local table that `auto` reads (~/.cache/loftup/attention-table.json)."),
) -> None:
    """Latency, throughput, memory, achieved GFLOP/s and parity per backend, size, batch and precision."""
    from .harness import BenchOptions, run_bench

    opts = BenchOptions(
        checkpoint=checkpoint, random_init=random_init, upsampler=upsampler, backbone=backbone, sizes=_int_list(sizes, "sizes"),
        batch_sizes=_int_list(batch_sizes, "batch-sizes"), precisions=None if precisions is None else [p for p in precisions.split(",") if p],
        backends=[b for b in backends.split(",") if b], warmup=warmup, repeats=repeats, max_seconds=max_seconds,
        threads=threads, device=device, out=out, cuda_graphs=cuda_graphs, profile=profile, memory_budget=memory_budget,
    )
    if attention:
        from .attention import run_attention_bench

        record = run_attention_bench(opts, log=lambda msg: typer.echo(msg, err=True))
        typer.echo(f"wrote {record['json_path']}; local attention table: {record['table_path'] or 'unchanged (nothing ran)'}")
        return
    from ..runtime.interrupts import on_interrupt

    with on_interrupt(lambda: "no results written (the JSON is written once every row has run); temporary engines removed"):
        report = run_bench(opts)
    wrote = f"wrote {report.json_path}" + (f" and {report.plot_path}" if report.plot_path else "")
    ran = [r for r in report.rows if r["status"] == "ok"]
    if not ran:  # the table and the JSON say why each row did not run; the exit code says that none did
        reasons = sorted({f"{r['status']}: {r['reason']}" for r in report.rows})
        raise LoftupError(f"no benchmark row ran ({'; '.join(reasons[:2])}{' ...' if len(reasons) > 2 else ''}); {wrote}")
    typer.echo(wrote)


__all__ = ["bench_command"]
