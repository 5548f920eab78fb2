"""Peak resident memory of one LoftUp forward per engine and size, each in a fresh process (issue 18).

    .venv/bin/python benchmarks/peak_rss.py --sizes 448,896 --engines torch,onnxruntime --out results.json

Each (engine, size) runs in a new Python process that builds the engine, runs one upsampler
forward on random inputs and reports its lifetime peak RSS (VmHWM: imports, weights, inputs,
output and everything in between) and the forward's wall time. The model is a random-init
LoftUp of the real default size (C = 384, DINOv2-S/14 features); memory does not depend on the
weights. torch: eager PyTorch (sdpa attention) with `--memory-budget` = output + weights +
`--slack` (the issue's goal), so tiling is what keeps it there. onnxruntime: the query-chunked
ONNX graph `loftup export` writes (exported once, up to the largest size, into --workdir). The
bench machine's load changes the times, never the memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
from loftup.runtime.budget import proc_kib
engine_kind, size, C, budget, path, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
torch.set_num_threads(threads)
if engine_kind == "torch":
    from loftup.export.engine import TorchEngine, with_attention_backend
    from loftup.model import LoftUp, LoftUpConfig
    torch.manual_seed(0)
    model = with_attention_backend(LoftUp(LoftUpConfig(feat_dim=C)), "sdpa")
    engine = TorchEngine(model, None, memory_budget=budget)
    plan = engine.model.upsampler.tile_plan
else:
    from loftup.export.engine import load_engine
    engine = load_engine(path, threads=threads)
    plan = None
gen = torch.Generator().manual_seed(0)
lr = torch.randn(1, C, size // 14, size // 14, generator=gen)
image = torch.randn(1, 3, size, size, generator=gen)
before = proc_kib("/proc/self/status", "VmRSS")
tiles = plan(1, size, size, lr.shape[2] * lr.shape[3]) if plan else None
t = time.perf_counter()
out = engine(lr, image)
dt = time.perf_counter() - t
print(json.dumps({"peak_bytes": proc_kib("/proc/self/status", "VmHWM"), "rss_before_bytes": before, "seconds": dt,
                  "tile_plan": tiles, "out_bytes": out.numel() * out.element_size(), "finite": bool(torch.isfinite(out).all())}))
"""


def weights_bytes(C: int) -> int:
    from loftup.model import LoftUp, LoftUpConfig

    return sum(p.numel() * p.element_size() for p in LoftUp(LoftUpConfig(feat_dim=C)).parameters())


def export_onnx_engine(workdir: Path, C: int, max_size: int) -> Path:
    """The query-chunked ONNX graph of a random-init model, as `loftup export --format onnx` writes it."""
    import torch

    from loftup.export.exporter import export_model
    from loftup.model import LoftUp, LoftUpConfig

    path = workdir / f"loftup_c{C}_max{max_size}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        export_model(LoftUp(LoftUpConfig(feat_dim=C)).eval(), None, path, fmt="onnx", scope="upsampler",
                     sizes=(112, 224, max_size), max_batch=1, patch_size=14, check=False)
    return path


def run_one(kind: str, size: int, C: int, budget: int, path: str, threads: int, timeout: float) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(size), str(C), str(budget), path, str(threads)],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"status": "failed", "reason": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else f"exit {done.returncode}"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="448,896")
    ap.add_argument("--engines", default="torch,onnxruntime")
    ap.add_argument("--feat-dim", type=int, default=384)
    ap.add_argument("--slack-gb", type=float, default=0.5, help="budget = output + weights + this")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx-max-size", type=int, default=896, help="largest size the ONNX engine is exported for")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/loftup-peak-rss"))
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    args.workdir.mkdir(parents=True, exist_ok=True)
    C = args.feat_dim
    weights = weights_bytes(C)
    onnx_path = ""
    if "onnxruntime" in engines:
        onnx_path = str(export_onnx_engine(args.workdir, C, args.onnx_max_size))
    rows = []
    for size in sizes:
        out_bytes = C * size * size * 4
        budget = out_bytes + weights + int(args.slack_gb * 2**30)
        for kind in engines:
            row = {"engine": kind, "size": size, "budget_bytes": budget, "output_bytes": out_bytes, "weights_bytes": weights,
                   "load_average": list(os.getloadavg())}
            if kind == "onnxruntime" and size > args.onnx_max_size:
                row.update(status="skipped", reason=f"the ONNX engine is exported up to {args.onnx_max_size} px")
            else:
                row.update(run_one(kind, size, C, budget, onnx_path, args.threads, args.timeout))
            rows.append(row)
            print(render_row(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "feat_dim": C, "rows": rows}, indent=2))
    return 0


def render_row(r: dict) -> str:
    gb = 2**30
    head = f"{r['engine']:12s} {r['size']:5d}px  budget {r['budget_bytes'] / gb:5.2f} GB"
    if r["status"] != "ok":
        return f"{head}  {r['status']}: {r['reason']}"
    return (f"{head}  peak {r['peak_bytes'] / gb:5.2f} GB (before forward {r['rss_before_bytes'] / gb:4.2f}, output "
            f"{r['out_bytes'] / gb:4.2f})  {r['seconds']:7.1f} s  tiles {r['tile_plan']}  load {r['load_average'][0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
