"""`loftup bench --sizes 448` memory, every engine in a fresh process (issue 26: each within +1024 MB).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory.py [--sizes 448] [--backends ...] [--precisions fp32,bf16,int8]

For every (backend, precision) this runs, in a new Python process,

    python -m loftup bench --sizes SIZE --backends B --precisions P --warmup 1 --repeats 1 --out X.json

with bench's default settings otherwise (the shipped checkpoint, the default memory budget) and
reads the row's memory: `increase_mb` = peak process RSS during the timed call minus the RSS
when it started (`loftup.bench.memory.PeakMemory`: sampled RSS + VmHWM), `peak_mb` the
peak itself. A fresh process per row, so no row inherits another's allocator state or
engines. Writes benchmarks/results/<cpu>/bench_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loftup.bench.results import load_average, markdown_table, results_folder, run_environment, write_results

BACKENDS = ("torch-reference", "torch-sdpa", "torch-compile", "torch-auto", "torch-stages", "onnxruntime-cpu")
LIMIT_MB = 1024
# What each backend runs: int8 is an ONNX Runtime engine; ONNX Runtime's CPU provider has no bf16.
RUNS = {"onnxruntime-cpu": ("fp32", "int8")}
TORCH_PRECISIONS = ("fp32", "bf16")


def runs(backend: str, precision: str) -> bool:
    return precision in RUNS.get(backend, TORCH_PRECISIONS)


def run_row(size: int, backend: str, precision: str, threads: int, timeout: float) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="loftup-bench-mem-") as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "loftup", "bench", "--sizes", str(size), "--backends", backend, "--precisions", precision,
               "--warmup", "1", "--repeats", "1", "--threads", str(threads), "--out", str(out)]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        seconds = time.perf_counter() - t
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            return [{"backend": backend, "precision": precision, "size": size, "status": "failed", "reason": tail[:300],
                     "process_seconds": seconds}]
        rows = json.loads(out.read_text())["rows"]
    return [{**{k: r.get(k) for k in ("backend", "precision", "size", "status", "reason")},
             "memory": r.get("memory"), "latency_ms": (r.get("latency_ms") or {}).get("median"),
             "process_seconds": seconds, "load_average": load_average()} for r in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="448")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="bench_memory")
    args = ap.parse_args(argv)
    env = run_environment()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for backend in args.backends.split(","):
            for precision in (p for p in args.precisions.split(",") if runs(backend, p)):
                for row in run_row(size, backend, precision, args.threads, args.timeout):
                    rows.append(row)
                    print(render_row(row), flush=True)
    data = {"benchmark": "bench_memory", "environment": env, "limit_mb": LIMIT_MB, "threads": args.threads, "rows": rows}
    paths = write_results(results_folder(args.out), args.name, data, render(data))
    print("\n".join(map(str, paths)))
    return 0


def render_row(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['backend']:18s} {r['precision']:5s} {r['size']}px  {r['status']}: {r.get('reason')}"
    m = r["memory"]
    return (f"{r['backend']:18s} {r['precision']:5s} {r['size']}px  +{m['increase_mb']:.0f} MB (peak {m['peak_mb']:.0f} MB)  "
            f"{r['latency_ms'] / 1e3:.1f} s  [{r['process_seconds']:.0f} s process]")


def render(data: dict) -> str:
    rows = []
    for r in data["rows"]:
        if r["status"] == "ok":
            m = r["memory"]
            rows.append([r["size"], r["backend"], r["precision"], f"+{m['increase_mb']:.0f}", f"{m['peak_mb']:.0f}",
                         "yes" if m["increase_mb"] <= data["limit_mb"] else "**no**", f"{r['latency_ms'] / 1e3:.1f}",
                         f"{r['process_seconds']:.0f}"])
        else:
            rows.append([r["size"], r["backend"], r["precision"], r["status"], "-", "-", "-", r.get("reason") or ""])
    return "\n\n".join([
        "# `loftup bench` memory, one fresh process per engine",
        f"Default settings (shipped checkpoint, default memory budget), {data['threads']} threads, one warm-up and one timed "
        f"call; +MB = peak RSS during the timed call minus RSS at its start. Limit: +{data['limit_mb']} MB.",
        markdown_table(["size", "backend", "precision", "+MB", "peak MB", "within limit", "latency s", "process s / reason"], rows),
    ])


if __name__ == "__main__":
    sys.exit(main())
