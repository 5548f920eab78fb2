"""Downstream evaluation: probes, dataset readers, metrics, baselines, engine parity, mini benchmark.

    from loftup.eval import run_eval, EvalOptions            # what `loftup eval` runs
    from loftup.eval import run_mini_benchmark               # offline mini benchmark
    from loftup.eval.upsamplers import BackboneRunner, make_baseline, LoftUpFeatures

Names are imported lazily, so importing this package (the CLI does, at start-up) does not
import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalOptions": "runner",
    "run_eval": "runner",
    "run_mini_benchmark": "mini",
    "load_mini_images": "mini",
    "run_probe": "parity",
    "parity_report": "parity",
    "ParityReport": "parity",
    "probe_config": "probes",
    "ProbeConfig": "probes",
    "train_head": "probes",
    "evaluate": "probes",
    "evaluate_video": "probes",
    "propagate_labels": "probes",
    "BackboneRunner": "upsamplers",
    "FeatureSource": "upsamplers",
    "LoftUpFeatures": "upsamplers",
    "EngineFeatures": "upsamplers",
    "make_baseline": "upsamplers",
    "open_engine": "upsamplers",
}

__all__ = [  # noqa: RUF022 - grouped like _EXPORTS
    "BackboneRunner", "EngineFeatures", "EvalOptions", "FeatureSource", "LoftUpFeatures", "ParityReport", "ProbeConfig",
    "evaluate", "evaluate_video", "load_mini_images", "make_baseline", "open_engine", "parity_report",
    "probe_config", "propagate_labels", "run_eval", "run_mini_benchmark", "run_probe", "train_head",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
