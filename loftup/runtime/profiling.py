"""Named stages of the upsampler for `loftup bench --profile`, free when nobody profiles.

The model marks its stages with ``with stage("convs"):``. Outside `stage_markers()` that is a
shared no-op context (one global read); inside, each stage is a `torch.profiler.record_function`
range ``loftup::NAME``, so the profiler attributes CPU time and the GPU kernels launched within
it to the stage (`loftup.bench.profile`). Markers sit around compiled functions, never inside
them, so switching them on does not recompile anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

PREFIX = "loftup::"
# Table order (the data path); "forward" spans one whole call.
STAGES = (
    "lr channel norm",
    "kv projection",
    "min-max",
    "fourier features",
    "convs",
    "q projection",
    "attention",
    "out projection",
    "ffn",
    "final norm",
    "output head",
)

_ACTIVE = False
_NULL = contextlib.nullcontext()


def stage(name: str):
    """Context marking one stage (a record_function range while `stage_markers()` is on)."""
    if not _ACTIVE:
        return _NULL
    import torch

    return torch.profiler.record_function(PREFIX + name)


@contextlib.contextmanager
def stage_markers() -> Iterator[None]:
    """Turn the stage markers on for the duration (used by the profiler harness only)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, True
    try:
        yield
    finally:
        _ACTIVE = previous
