"""INT8 ONNX Runtime engine against the fp32 one (and our PyTorch fp32), one run, interleaved.

    PYTHONPATH=. .venv/bin/python benchmarks/ort_int8.py [--sizes 224,448] [--repeats 3] [--mini]

Exports the checkpoint (default: the package's shipped DINOv2-S/14 one) twice with the code
`loftup export` runs - upsampler scope, looped graph, max 448 px - once fp32 and once int8
(ONNX Runtime static quantization calibrated on the bundled photos with the backbone's
features, `loftup.export.quantize`), into --workdir (reused when present). Then per size: ORT
fp32, ORT int8 and our PyTorch fp32 engine timed in interleaved rounds (ratios: median of
per-round ratios), and each engine's features against the fp32 PyTorch reference (cosine).

--mini also runs the mini benchmark (`loftup eval --probe mini --engine`) for both ONNX engines
against their checkpoint and records every metric's delta (engine - reference) and the
tolerance each was judged with (int8: the ONNX format row's own). Minutes more.

Writes benchmarks/results/<cpu>/ort_int8.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from loftup.bench.results import interleaved_rounds, markdown_table, results_folder, run_environment, write_results


def export_engines(model, backbone, workdir: Path, calibration, log) -> dict[str, Path]:
    from loftup.export.exporter import export_model

    paths = {}
    for prec in ("fp32", "int8"):
        path = workdir / f"upsampler_{prec}.onnx"
        if not path.exists():
            t = time.perf_counter()
            export_model(model, backbone, path, fmt="onnx", scope="upsampler", precision=prec, sizes=(112, 224, 448),
                         max_batch=1, check=False, calibration=calibration, log=log,
                         traced=paths["fp32"] if prec == "int8" else None)  # int8: quantized from the fp32 trace
            log(f"exported {path.name} in {time.perf_counter() - t:.0f} s")
        paths[prec] = path
    return paths


def run_mini(engine: Path, checkpoint, out: Path, log) -> dict:
    from loftup.eval.runner import EvalOptions, run_eval

    res = run_eval(EvalOptions(probe="mini", engine=engine, reference=Path(checkpoint), out=out, progress=False), log=log)
    parity = res["parity_report"]
    return {"passed": parity.passed, "delta": parity.delta, "reference": parity.reference, "engine": parity.engine,
            "atol": parity.atol, "rtol": parity.rtol, "features": parity.features}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="LoftUp checkpoint (default: the shipped DINOv2-S/14 one)")
    ap.add_argument("--calibration", default=None, help="folder of calibration photos (default: the bundled ones)")
    ap.add_argument("--sizes", default="224,448")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/loftup-ort-int8"))
    ap.add_argument("--mini", action="store_true", help="also the mini benchmark's probe deltas of both engines")
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="ort_int8")
    args = ap.parse_args(argv)

    from loftup.backbones import create_backbone
    from loftup.export.engine import TorchEngine, reference_engine
    from loftup.export.onnx import OnnxEngine, read_metadata
    from loftup.export.parity import compare, photo_batch
    from loftup.model import load_or_init
    from loftup.pipeline import backbone_input

    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    model = load_or_init(args.checkpoint, backbone="dinov2_vits14").eval()
    backbone = create_backbone(model.cfg.backbone or "dinov2_vits14")
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = run_environment()
    paths = export_engines(model, backbone, args.workdir, args.calibration, log)
    engines = {"ort fp32": OnnxEngine(paths["fp32"], threads=args.threads), "ort int8": OnnxEngine(paths["int8"], threads=args.threads),
               "torch fp32": TorchEngine(model)}
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        image, photos = photo_batch(1, size, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        with torch.no_grad():
            lr = backbone(backbone_input(image, backbone.patch_size)).float()
        reference = reference_engine(model)(lr, image)
        outs = {k: e(lr, image) for k, e in engines.items()}
        times = interleaved_rounds({k: (lambda e=e: e(lr, image)) for k, e in engines.items()}, args.repeats)
        log(f"{size}px: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in times.items()))
        for k in engines:
            rows.append({"size": size, "engine": k, "photo": photos[0], "seconds": times[k], "median_s": statistics.median(times[k]),
                         "speedup_vs_ort_fp32": statistics.median(a / b for a, b in zip(times["ort fp32"], times[k])),
                         "speedup_vs_torch_fp32": statistics.median(a / b for a, b in zip(times["torch fp32"], times[k])),
                         "parity_vs_fp32_reference": compare(outs[k], reference)})
    mini = {}
    if args.mini:
        checkpoint = getattr(model, "source_checkpoint", None) or args.checkpoint
        for prec, path in paths.items():
            log(f"mini benchmark: {path.name} against {checkpoint} ...")
            mini[prec] = run_mini(path, checkpoint, args.workdir / f"eval_{prec}", log)
    data = {"benchmark": "ort_int8", "environment": env, "checkpoint": str(getattr(model, "source_checkpoint", None)),
            "threads": args.threads, "repeats": args.repeats, "engines": {k: str(v) for k, v in paths.items()},
            "quantization": read_metadata(paths["int8"]).runtime.get("quantization"), "rows": rows, "mini": mini}
    out = write_results(results_folder(args.out), args.name, data, render(data))
    print("\n".join(map(str, out)))
    return 0


def render(data: dict) -> str:
    head = ["size", "engine", "median s", "x ORT fp32", "x torch fp32", "vs fp32 ref: mean / min cos, max abs"]
    rows = [[r["size"], r["engine"], f"{r['median_s']:.2f}", f"{r['speedup_vs_ort_fp32']:.2f}", f"{r['speedup_vs_torch_fp32']:.2f}",
             f"{r['parity_vs_fp32_reference']['mean_cos']:.6f} / {r['parity_vs_fp32_reference']['min_cos']:.5f}, "
             f"{r['parity_vs_fp32_reference']['max_abs']:.3f}"] for r in data["rows"]]
    parts = [f"# INT8 vs fp32 ONNX Runtime (CPU provider, batch 1, {data['threads']} threads, interleaved, "
             f"{data['repeats']} rounds)",
             f"Weights `{data['checkpoint']}`; 'x' columns: median of per-round ratios (> 1: faster). Quantization: "
             f"{(data['quantization'] or {}).get('format')} / {(data['quantization'] or {}).get('weights')}, calibrated on "
             f"{', '.join((data['quantization'] or {}).get('photos', []))}.",
             markdown_table(head, rows)]
    if data["mini"]:
        keys = sorted(next(iter(data["mini"].values()))["delta"])
        mrows = [[prec, "pass" if m["passed"] else "FAIL", f"{m['atol']:g} + {m['rtol']:g}*|ref|",
                  *(f"{m['reference'][k]:.4f} -> {m['engine'][k]:.4f} ({m['delta'][k]:+.4f})" for k in keys)]
                 for prec, m in data["mini"].items()]
        parts += ["## Mini benchmark (`loftup eval --probe mini --engine`), reference -> engine (delta)",
                  markdown_table(["engine", "parity", "tolerance", *keys], mrows)]
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
