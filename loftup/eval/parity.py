"""Engine parity on a probe: does a deployed engine give the reference's probe results?

`run_probe` trains each probe head ONCE - on the reference's features - and evaluates that
same head with the reference's and with the engine's features, batch by batch on the same
images; baselines (if any) get heads of their own. The report holds both metric sets, their
difference, and per-batch feature parity (per-pixel cosine, max / mean abs error).

Tolerance (documented contract): the engine passes when every reported metric m satisfies
|m_engine - m_reference| <= atol + rtol * |m_reference|, with atol = 1e-3 and rtol = 1e-2 by
default (`--atol`, `--rtol`). Metrics are fractions (mIoU 0.61, not 61) or natural units
(depth RMSE, degrees), so e.g. mIoU 0.5 may move by 0.006, a depth RMSE of 0.1 by 0.002 and
an angular RMSE of 30 degrees by 0.3 degrees. Counts (images, objects) must match exactly.
An fp32 ONNX engine differs from PyTorch by ~1e-6 in its features and gives identical
metrics in practice; the tolerance leaves room for fp16 / TensorRT engines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .datasets import SampleList, Video
from .probes import (
    EvalResult,
    ProbeConfig,
    evaluate,
    evaluate_video,
    make_task,
    train_head,
)

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-2
COUNT_KEYS = ("images", "objects", "pixels", "classes_present")


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def compare_metrics(reference: dict[str, Any], engine: dict[str, Any], atol: float = DEFAULT_ATOL,
                    rtol: float = DEFAULT_RTOL) -> tuple[dict[str, float], list[str]]:
    """(engine - reference per metric, list of metrics outside the tolerance)."""
    ref, eng = _numeric(reference), _numeric(engine)
    delta, failures = {}, []
    for key in ref:
        if key not in eng:
            failures.append(f"{key}: missing for the engine")
            continue
        a, b = ref[key], eng[key]
        if math.isnan(a) and math.isnan(b):
            delta[key] = 0.0
            continue
        d = b - a
        delta[key] = d
        limit = 0.0 if key in COUNT_KEYS else atol + rtol * abs(a)
        if not abs(d) <= limit:  # NaN on one side fails too
            failures.append(f"{key}: reference {a:.6g}, engine {b:.6g} (|delta| {abs(d):.3g} > {limit:.3g})")
    return delta, failures


def summarize_features(batches: list[dict[str, float]]) -> dict[str, float]:
    """Worst case over batches: min cosine, max abs; plus means."""
    if not batches:
        return {"batches": 0}
    return {
        "batches": len(batches),
        "min_cos": min(b["min_cos"] for b in batches),
        "mean_cos": sum(b["mean_cos"] for b in batches) / len(batches),
        "max_abs": max(b["max_abs"] for b in batches),
        "mean_abs": sum(b["mean_abs"] for b in batches) / len(batches),
    }


@dataclass
class ParityReport:
    """Reference vs engine on one probe. Truthy only when every metric is within tolerance."""

    probe: str
    primary: str
    reference: dict[str, Any]
    engine: dict[str, Any]
    delta: dict[str, float]
    features: dict[str, float]
    batches: list[dict[str, Any]] = field(default_factory=list)
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe, "primary_metric": self.primary, "passed": self.passed,
            "tolerance": {"atol": self.atol, "rtol": self.rtol, "rule": "|engine - reference| <= atol + rtol * |reference|"},
            "reference": self.reference, "engine": self.engine, "delta": self.delta,
            "feature_parity": self.features, "feature_parity_per_batch": self.batches, "failures": self.failures,
        }

    def summary(self) -> str:
        p = self.primary
        line = (f"parity {'PASS' if self.passed else 'FAIL'}: {p} reference {self.reference.get(p, float('nan')):.6g}, "
                f"engine {self.engine.get(p, float('nan')):.6g}, delta {self.delta.get(p, float('nan')):+.3g} "
                f"(tolerance {self.atol:g} + {self.rtol:g}*|ref|)")
        if self.features.get("batches"):
            line += (f"; features over {self.features['batches']} batches: cosine min {self.features['min_cos']:.6f}, "
                     f"max abs {self.features['max_abs']:.3g}")
        return line


def run_probe(probe: str, sources: dict[str, Any], cfg: ProbeConfig, train: SampleList | None = None,
              val: SampleList | list[Video] | None = None, shared_head: dict[str, str] | None = None,
              pairs: list[tuple[str, str]] = (), progress: bool = False,
              log: Callable[[str], None] | None = None) -> tuple[EvalResult, dict[str, Any]]:
    """Train heads and evaluate `sources` on one probe.

    shared_head maps a source to the source whose head it borrows (parity: {"engine":
    "reference"}); every other source gets a head trained on its own features.
    Returns the evaluation and {"heads_trained_on": ...} for the report.
    """
    shared_head = dict(shared_head or {})
    if probe == "video":
        return evaluate_video(sources, val, cfg, pairs, progress), {"heads_trained_on": {}}
    task = make_task(probe, (train or val).meta)
    heads, trained_on = {}, {}
    for name, src in sources.items():
        if name in shared_head:
            continue
        if log:
            log(f"training the {probe} head on {name} features ({cfg.epochs} epochs, {len(train.subset(cfg.max_train))} images)")
        heads[name] = train_head(task, src, train, cfg, progress, log)
        trained_on[name] = name
    for name, owner in shared_head.items():
        heads[name] = heads[owner]
        trained_on[name] = owner
    result = evaluate(task, heads, sources, val, cfg, pairs, progress)
    return result, {"heads_trained_on": trained_on, "primary": task.primary, "higher_is_better": task.higher_is_better}


def parity_report(probe: str, result: EvalResult, primary: str, reference: str = "reference", engine: str = "engine",
                  atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> ParityReport:
    """Compare the two sources' metrics and summarise their per-batch feature parity."""
    delta, failures = compare_metrics(result.metrics[reference], result.metrics[engine], atol, rtol)
    batches = result.parity.get(f"{reference}~{engine}", [])
    return ParityReport(probe, primary, result.metrics[reference], result.metrics[engine], delta,
                        summarize_features(batches), batches, atol, rtol, failures)


PRIMARY = {"seg": "miou", "depth": "rmse", "normals": "rmse", "matting": "mse", "video": "JF", "interactive": "iou@1", "ovseg": "miou"}

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "PRIMARY", "ParityReport", "compare_metrics", "parity_report", "run_probe",
           "summarize_features"]
