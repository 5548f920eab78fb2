"""Which attention backend `auto` runs on a GPU: a table keyed by measurement, not by name.

Key: ``"{arch}/{dtype}/{head class}/{size class}/{mode}"``, e.g. ``"sm90/bf16/d128/448/train"``.

- arch: ``sm80``, ``sm90``, ... (``torch.cuda.get_device_capability``);
- dtype: ``fp32``, ``fp16``, ``bf16`` (of q after autocast);
- head class: ``d128`` (padded head dim <= 128) or ``d256`` (<= 256);
- size class: by the work of one call, N queries x M keys: ``224`` (N*M <= 2^26; a 224 output
  with 16x16 tokens is 50176 x 256), ``448`` (<= 2^30; 200704 x 1024, also a 256x256 tile
  against 64x64 tokens), ``896`` (more; 802816 x 4096);
- mode: ``fwd`` (no gradient needed) or ``train`` (forward + backward).

Backends: ``triton`` (our kernel), ``flash`` / ``efficient`` / ``cudnn`` (one PyTorch fused
kernel), ``sdpa`` (PyTorch's own choice among its fused kernels, one call, unchunked; chunked
only where no fused kernel accepts the inputs).

The shipped table (`SHIPPED`) holds only what was measured on a GPU, each entry naming the
committed results file its figures come from (`RESULTS_H200`: one NVIDIA H200, torch 2.11,
Triton 3.6, 4 heads, batch 1, head dim 101 *unpadded*, before this table existed; the tests
check every figure against that file). Every other key is
*unmeasured* and gets `DEFAULT` (``sdpa``), i.e. PyTorch picks; `describe` says which is which.
fp16 was never measured (bf16 figures are not copied to it); sm80 was never measured.

`loftup bench --attention` measures the candidates on the user's GPU and writes a local table
(`local_table_path`, under ``$LOFTUP_CACHE`` or ``~/.cache/loftup``) whose entries override the
shipped ones. fp32 never resolves to ``triton`` through `auto`, whatever a table says: our fp32
kernel is IEEE fp32 on CUDA cores, measured 6x slower than sdpa (896: 4950 vs 816 ms).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError

ARCHS = ("sm80", "sm90")
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
HEAD_CLASSES = ("d128", "d256")
SIZE_CLASSES = ("224", "448", "896")
MODES = ("fwd", "train")
CANDIDATES = ("triton", "triton_v2", "flash", "efficient", "cudnn", "sdpa")
TRITON_CANDIDATES = ("triton", "triton_v2")  # never chosen for fp32 (IEEE-fp32 MMAs)
DEFAULT = "sdpa"
LOCAL_TABLE_NAME = "attention-table.json"

# The shapes each size class is measured at (N queries, M keys), and the head dims per class.
CLASS_SHAPES = {"224": (224 * 224, 256), "448": (448 * 448, 1024), "896": (896 * 896, 4096)}
CLASS_HEAD_DIMS = {"d128": 104, "d256": 200}  # LoftUp's 101 and 197, padded to multiples of 8

# The first GPU run's figures (a transcription of its session note; the file says so), relative
# to the repository root.
RESULTS_H200 = "benchmarks/results/nvidia-h200/2026-11-30-first-run.json"
_FINDINGS = "attention alone (H200, bf16, 4 heads, batch 1, d={d} unpadded; ms)"
_FINDINGS_E2E = "fp32 backends end to end (H200, upsampler only, batch 1; ms)"


@dataclass(frozen=True)
class TableEntry:
    """One key's backend, the figures it was chosen from (ms per call), and where they come from
    (`results`: the committed results file holding those figures, for shipped entries)."""

    backend: str
    ms: dict = field(default_factory=dict)
    source: str = ""
    measured: bool = True
    note: str = ""
    results: str = ""


SHIPPED: dict[str, TableEntry] = {
    # bf16, head dim 101 (padded class d128): flash wins every forward, our kernel the backward at 224/448.
    "sm90/bf16/d128/224/fwd": TableEntry("flash", {"flash": 0.282, "triton": 0.347, "sdpa-chunked": 0.529}, _FINDINGS.format(d=101), results=RESULTS_H200),
    "sm90/bf16/d128/224/train": TableEntry("triton", {"triton": 1.40, "flash": 4.78}, _FINDINGS.format(d=101), results=RESULTS_H200),
    "sm90/bf16/d128/448/fwd": TableEntry("flash", {"flash": 1.65, "triton": 2.28, "sdpa-chunked": 3.50}, _FINDINGS.format(d=101), results=RESULTS_H200),
    "sm90/bf16/d128/448/train": TableEntry("triton", {"triton": 10.4, "flash": 17.9}, _FINDINGS.format(d=101), results=RESULTS_H200),
    "sm90/bf16/d128/896/fwd": TableEntry("flash", {"flash": 21.7, "triton": 29.6, "sdpa-chunked": 65.2}, _FINDINGS.format(d=101), results=RESULTS_H200),
    "sm90/bf16/d128/896/train": TableEntry("flash", {"flash": 86.0, "triton": 144.0}, _FINDINGS.format(d=101), results=RESULTS_H200),
    # bf16, head dim 197 (d256), measured at 448 only.
    "sm90/bf16/d256/448/fwd": TableEntry("flash", {"flash": 3.66, "triton": 3.98, "sdpa-chunked": 5.88}, _FINDINGS.format(d=197), results=RESULTS_H200),
    "sm90/bf16/d256/448/train": TableEntry("flash", {"flash": 24.4, "triton": 29.9}, _FINDINGS.format(d=197), results=RESULTS_H200),
    # fp32: only end to end at 896, sdpa (then chunked, math kernel) against the IEEE-fp32 Triton path.
    "sm90/fp32/d128/896/fwd": TableEntry(
        "sdpa", {"sdpa-chunked (end to end)": 816.0, "triton (end to end)": 4950.0}, _FINDINGS_E2E,
        note="sdpa now runs PyTorch's fused memory-efficient kernel on padded fp32 heads: that kernel is unmeasured",
        results=RESULTS_H200,
    ),
}


# ------------------------------------------------------------------------------------------
def arch_of(device: torch.device) -> str:
    """'sm90' for an H100/H200, 'sm80' for an A100, ... (compute capability of a CUDA device)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPES.get(dtype, str(dtype).removeprefix("torch."))


def head_class(d: int) -> str:
    return "d128" if d <= 128 else "d256"


def size_class(n: int, m: int) -> str:
    work = n * m
    return "224" if work <= 2**26 else "448" if work <= 2**30 else "896"


def table_key(arch: str, dtype: torch.dtype | str, d: int, n: int, m: int, grad: bool) -> str:
    dt = dtype if isinstance(dtype, str) else dtype_name(dtype)
    return f"{arch}/{dt}/{head_class(d)}/{size_class(n, m)}/{'train' if grad else 'fwd'}"


def all_keys(archs=ARCHS) -> list[str]:
    return [f"{a}/{dt}/{h}/{s}/{mode}" for a in archs for dt in DTYPES.values() for h in HEAD_CLASSES
            for s in SIZE_CLASSES for mode in MODES]


# ------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """loftup's cache folder (`loftup.io.cache_dir`)."""
    from ..io import cache_dir as _cache_dir

    return _cache_dir()


def local_table_path() -> Path:
    return cache_dir() / LOCAL_TABLE_NAME


class AttentionTable:
    """The shipped table with a local one (measured by `loftup bench --attention`) over it."""

    def __init__(self, local: dict[str, TableEntry] | None = None, shipped: dict[str, TableEntry] | None = None,
                 local_path: Path | None = None):
        self.shipped = SHIPPED if shipped is None else shipped
        self.local = local or {}
        self.local_path = local_path

    @classmethod
    def load(cls, path: Path | None = None) -> "AttentionTable":
        """Shipped entries plus the local file's (if any; an unreadable file is ignored with a warning)."""
        path = Path(path) if path is not None else local_table_path()
        return cls(read_local_table(path), local_path=path)

    def entry(self, key: str) -> TableEntry:
        if key in self.local:
            return self.local[key]
        if key in self.shipped:
            return self.shipped[key]
        return TableEntry(DEFAULT, source="unmeasured: PyTorch's own fused-kernel choice", measured=False)

    def lookup(self, arch: str, dtype: torch.dtype, d: int, n: int, m: int, grad: bool) -> str:
        """The backend for one call's (arch, dtype, padded head dim, N, M, gradient) - never triton for fp32."""
        choice = self.entry(table_key(arch, dtype, d, n, m, grad)).backend
        if choice in TRITON_CANDIDATES and dtype == torch.float32:
            return DEFAULT
        return choice

    def describe(self, archs=ARCHS) -> list[dict]:
        """Every key of `archs` with its backend, whether it was measured and where from."""
        rows = []
        for key in all_keys(archs):
            e = self.entry(key)
            origin = "local" if key in self.local else "shipped" if key in self.shipped else "default"
            rows.append({"key": key, "backend": e.backend, "measured": e.measured, "origin": origin,
                         "source": e.source, "ms": e.ms, "note": e.note, "results": e.results})
        return rows


def read_local_table(path: Path) -> dict[str, TableEntry]:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {k: TableEntry(**v) for k, v in data["entries"].items() if v.get("backend") in CANDIDATES}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        import warnings

        warnings.warn(f"loftup: ignoring the local attention table {path} ({type(exc).__name__}); "
                      "run `loftup bench --attention` again to rewrite it", stacklevel=2)
        return {}


def write_local_table(entries: dict[str, TableEntry], path: Path | None = None, device_name: str = "") -> Path:
    """Merge `entries` into the local table file (atomically) and return its path."""
    from ..io import atomic_write

    path = Path(path) if path is not None else local_table_path()
    merged = {**read_local_table(path), **entries}
    bad = sorted({e.backend for e in merged.values()} - set(CANDIDATES))
    if bad:
        raise ConfigError(f"unknown attention backend(s) {bad} in a table; known: {', '.join(CANDIDATES)}")
    doc = {"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": device_name,
           "entries": {k: asdict(v) for k, v in sorted(merged.items())}}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1)))
    return path


def choose_fastest(key: str, results: dict[str, dict], source: str) -> TableEntry | None:
    """The entry for `key` from measured candidates: {backend: {"ms": float|None, "correct": bool}}.

    Only correct candidates that ran count; None when none did.
    """
    ok = {b: r["ms"] for b, r in results.items() if r.get("ms") is not None and r.get("correct")}
    if key.split("/")[1] == "fp32":
        for name in TRITON_CANDIDATES:
            ok.pop(name, None)  # the IEEE-fp32 paths are never chosen
    if not ok:
        return None
    best = min(ok, key=ok.get)
    return TableEntry(best, {b: round(v, 4) for b, v in ok.items()}, source)


__all__ = [
    "ARCHS", "CANDIDATES", "CLASS_HEAD_DIMS", "CLASS_SHAPES", "DEFAULT", "HEAD_CLASSES", "MODES", "RESULTS_H200", "SHIPPED",
    "SIZE_CLASSES", "AttentionTable", "TableEntry", "all_keys", "arch_of", "choose_fastest", "head_class",
    "local_table_path", "read_local_table", "size_class", "table_key", "write_local_table",
]
