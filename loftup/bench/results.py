"""Where measured tables go: `benchmarks/results/<machine>/<name>.json` + `.md`, named after the CPU.

Every benchmark script of the CPU deploy work (issue 26) writes through `write_results`, so each
table says which machine, which load (`uptime`'s load averages at start and end) and which
torch / ONNX Runtime versions it was taken with. Times taken on a loaded machine are not
final; ratios are taken inside one run (interleaved), never across runs.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

# AMD family 0x19 models that are Zen 4 (Genoa, Bergamo, Siena, Raphael, Phoenix); the rest of 0x19 is Zen 3.
_ZEN4_MODELS = set(range(0x10, 0x20)) | set(range(0x60, 0x80)) | set(range(0xA0, 0xB0))


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if info:
                    break  # the first processor's block is enough
                continue
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_slug() -> str:
    """A folder name for this CPU: model name, AMD Zen generation when known, logical cores
    (e.g. `amd-epyc-zen4-2c`)."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine() or "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"-(\d+)-core-processor$", "", slug)
    if info.get("vendor_id") == "AuthenticAMD" and "zen" not in slug:
        family, model = int(info.get("cpu family", "0")), int(info.get("model", "0"))
        gen = {0x17: "zen2", 0x19: "zen4" if model in _ZEN4_MODELS else "zen3", 0x1A: "zen5"}.get(family)
        slug += f"-{gen}" if gen else ""
    return f"{slug}-{os.cpu_count()}c"


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run_environment() -> dict[str, Any]:
    """Machine, versions and the load average now (what every results file records)."""
    import torch

    env: dict[str, Any] = {"machine": cpu_slug(), "cpu": _cpuinfo().get("model name", platform.processor()),
                           "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "load_average_start": load_average(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
    except ImportError:
        env["onnxruntime"] = None
    from .._version import __version__

    env["loftup"] = __version__
    return env


def results_folder(out: str | Path | None = None) -> Path:
    """`out`, or `benchmarks/results/<cpu_slug()>` of this checkout."""
    return Path(out) if out else RESULTS_DIR / cpu_slug()


def write_results(folder: str | Path, name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """`folder/name.json` and `folder/name.md`, written atomically; the load average at the end is
    added to `data["environment"]`. Returns both paths."""
    from ..io import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = data.setdefault("environment", {})
    env["load_average_end"] = load_average()
    env["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    atomic_write(json_path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))
    atomic_write(md_path, lambda p: p.write_text(markdown.rstrip() + "\n\n" + environment_line(env) + "\n"))
    return json_path, md_path


def environment_line(env: dict[str, Any]) -> str:
    """One markdown line: machine, threads, versions, load averages."""
    def la(v):
        return "/".join(f"{x:.2f}" for x in v) if v else "?"

    return (f"_Machine `{env.get('machine')}` ({env.get('cpu')}, {env.get('logical_cpus')} logical CPUs, "
            f"{env.get('torch_threads')} torch threads); torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
            f"loftup {env.get('loftup')}; load average (1/5/15 min) {la(env.get('load_average_start'))} at start, "
            f"{la(env.get('load_average_end'))} at end; {env.get('started')} to {env.get('finished')}._")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def interleaved_rounds(calls: dict[str, Callable[[], Any]], repeats: int, alternate: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each call over `repeats` rounds, every round timing each call once, back to
    back (the order reversed every other round when `alternate`), so that the ratios taken per
    round see the same machine state. Warm up before; this only times."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(repeats):
        order = list(calls) if not alternate or r % 2 == 0 else list(calls)[::-1]
        for name in order:
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
    return times
