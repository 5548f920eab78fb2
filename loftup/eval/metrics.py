"""Probe metrics: segmentation, depth, surface normals, video (DAVIS J / F), matting.

All functions take numpy arrays or torch tensors and return plain floats (fractions in
[0, 1], not percentages; depth in the target's units; angles in degrees), so the same code
scores a probe, the mini benchmark and a hand-computed test case. Streaming accumulators
(`ConfusionMatrix`, `DepthMeter`, `NormalMeter`, `MattingMeter`, `VideoMeter`) let a probe
score a dataset batch by batch without keeping predictions around.

Conventions, each the one of the protocol the paper follows:
- mIoU: IoU per class from a confusion matrix over the whole dataset; a class with no pixel
  in either the ground truth or the prediction is *absent* and left out of the mean (it
  neither scores 0 nor 1). Pixels labelled `ignore_index` are not counted.
- depth (Probe3D): valid pixels have ground truth > 0 (and finite); RMSE and the delta recalls
  (max(pred/gt, gt/pred) < 1.25^k) are computed per image and averaged over images.
- normals (Probe3D): angular error in degrees between unit vectors; per image the RMSE of the
  error and the recall at 11.25 / 22.5 / 30 degrees, averaged over images.
- DAVIS: J is the region IoU (1 when both masks are empty); F is the boundary F-measure with
  the DAVIS tolerance: boundaries match within ceil(0.008 * image diagonal) pixels (a disk).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DEPTH_THRESHOLDS = (1.25, 1.25**2, 1.25**3)
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
DAVIS_BOUND_TH = 0.008


def _np(x) -> np.ndarray:
    """A numpy view of a tensor or array (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------------------
# semantic segmentation


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows = ground truth, columns = prediction."""
    pred, target = _np(pred).astype(np.int64).ravel(), _np(target).astype(np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target differ in size: {pred.shape} vs {target.shape}")
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    pred, target = pred[keep], target[keep]
    pred = np.clip(pred, 0, num_classes - 1)
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(conf: np.ndarray) -> dict[str, float]:
    """mIoU over present classes, pixel accuracy and per-class IoU (NaN for absent classes)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = conf.sum()
    present = ~np.isnan(iou)
    return {
        "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        "classes_present": int(present.sum()),
    }


def mean_iou(pred, target, num_classes: int, ignore_index: int = 255) -> float:
    """mIoU of one prediction, absent classes excluded (see the module doc)."""
    return segmentation_scores(confusion_matrix(pred, target, num_classes, ignore_index))["miou"]


def pixel_accuracy(pred, target, ignore_index: int = 255) -> float:
    """Fraction of non-ignored pixels predicted correctly."""
    pred, target = _np(pred).ravel(), _np(target).ravel()
    keep = target != ignore_index
    return float((pred[keep] == target[keep]).mean()) if keep.any() else float("nan")


class ConfusionMatrix:
    """Accumulates a dataset's confusion matrix batch by batch."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, target) -> None:
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, float]:
        return segmentation_scores(self.matrix)


# ----------------------------------------------------------------------------------------
# depth


def depth_valid(gt) -> np.ndarray:
    gt = _np(gt)
    return np.isfinite(gt) & (gt > 0)


def depth_rmse(pred, gt, valid=None) -> float:
    """Root mean squared error over valid pixels (gt > 0 and finite, and `valid` if given)."""
    pred, gt = _np(pred).astype(np.float64), _np(gt).astype(np.float64)
    mask = depth_valid(gt) if valid is None else (depth_valid(gt) & _np(valid).astype(bool))
    if not mask.any():
        return float("nan")
    return float(np.sqrt(np.mean((pred[mask] - gt[mask]) ** 2)))


def delta_recall(pred, gt, threshold: float = 1.25**3, valid=None) -> float:
    """Fraction of valid pixels with max(pred/gt, gt/pred) < threshold (delta_3 by default).

    A non-positive prediction never counts as a hit.
    """
    pred, gt = _np(pred).astype(np.float64), _np(gt).astype(np.float64)
    mask = depth_valid(gt) if valid is None else (depth_valid(gt) & _np(valid).astype(bool))
    if not mask.any():
        return float("nan")
    p, g = pred[mask], gt[mask]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(p / g, g / np.where(p > 0, p, np.nan))
    ratio = np.where(p > 0, ratio, np.inf)
    return float(np.mean(ratio < threshold))


def depth_scores(pred, gt, valid=None) -> dict[str, float]:
    """rmse, d1, d2, d3 of one image."""
    out = {"rmse": depth_rmse(pred, gt, valid)}
    for k, t in enumerate(DEPTH_THRESHOLDS, start=1):
        out[f"d{k}"] = delta_recall(pred, gt, t, valid)
    return out


class _ImageAverage:
    """Averages per-image metric dicts (images without valid pixels are skipped).

    Subclasses set `score(pred, gt, valid)` -> dict; update(pred, gt, valid) scores each image
    of a batch with it.
    """

    score: staticmethod

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, scores: dict[str, float]) -> None:
        if any(math.isnan(v) for v in scores.values()):
            return
        for k, v in scores.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def update(self, pred, gt, valid=None) -> None:
        pred, gt = _np(pred), _np(gt)
        valid = None if valid is None else _np(valid)
        for i in range(gt.shape[0]):
            self.add(self.score(pred[i], gt[i], None if valid is None else valid[i]))

    def compute(self) -> dict[str, float]:
        out = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
        out["images"] = self.count
        return out


class DepthMeter(_ImageAverage):
    """Per-image depth scores averaged over a dataset. update(pred (B,H,W), gt (B,H,W), valid (B,H,W))."""

    score = staticmethod(depth_scores)


# ----------------------------------------------------------------------------------------
# surface normals


def angular_error(pred, gt) -> np.ndarray:
    """Angle in degrees between normal maps (..., 3); inputs need not be unit length."""
    pred, gt = _np(pred).astype(np.float64), _np(gt).astype(np.float64)
    pn = np.linalg.norm(pred, axis=-1)
    gn = np.linalg.norm(gt, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (pred * gt).sum(-1) / np.maximum(pn * gn, 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def normal_scores(pred, gt, valid=None) -> dict[str, float]:
    """Angular RMSE (degrees) and recall at 11.25 / 22.5 / 30 degrees over valid pixels.

    pred, gt: (H, W, 3); valid: (H, W) bool, default = pixels whose gt normal is non-zero.
    """
    gt_np = _np(gt)
    mask = np.linalg.norm(gt_np, axis=-1) > 0 if valid is None else _np(valid).astype(bool)
    mask &= np.isfinite(gt_np).all(-1)
    if not mask.any():
        return {"rmse": float("nan"), **{f"recall_{t:g}": float("nan") for t in NORMAL_THRESHOLDS}}
    err = angular_error(pred, gt_np)[mask]
    out = {"rmse": float(np.sqrt(np.mean(err**2)))}
    for t in NORMAL_THRESHOLDS:
        out[f"recall_{t:g}"] = float(np.mean(err < t))
    return out


class NormalMeter(_ImageAverage):
    """Per-image normal scores averaged over a dataset. update(pred (B,H,W,3), gt (B,H,W,3), valid (B,H,W))."""

    score = staticmethod(normal_scores)


# ----------------------------------------------------------------------------------------
# matting


class MattingMeter:
    """Mean squared error of alpha mattes in [0, 1], over all pixels of a dataset."""

    def __init__(self):
        self.sq, self.abs, self.count = 0.0, 0.0, 0

    def update(self, pred, gt) -> None:
        pred, gt = _np(pred).astype(np.float64), _np(gt).astype(np.float64)
        self.sq += float(((pred - gt) ** 2).sum())
        self.abs += float(np.abs(pred - gt).sum())
        self.count += gt.size

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"mse": self.sq / n, "mae": self.abs / n, "pixels": self.count}


# ----------------------------------------------------------------------------------------
# video object segmentation (DAVIS)


def region_similarity(pred, gt) -> float:
    """J: IoU of two binary masks; 1.0 when both are empty."""
    pred, gt = _np(pred).astype(bool), _np(gt).astype(bool)
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def mask_boundary(mask) -> np.ndarray:
    """One-pixel-wide boundary of a binary mask: pixels whose right, lower or lower-right
    neighbour (inside the image) has the other value."""
    m = _np(mask).astype(bool)
    b = np.zeros_like(m)
    b[:, :-1] |= m[:, :-1] != m[:, 1:]
    b[:-1, :] |= m[:-1, :] != m[1:, :]
    b[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]
    return b


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= r * r


def boundary_tolerance(shape: Sequence[int], bound_th: float = DAVIS_BOUND_TH) -> int:
    """Matching radius in pixels: bound_th itself if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(shape[0], shape[1]))


def boundary_f_measure(pred, gt, bound_th: float = DAVIS_BOUND_TH) -> tuple[float, float, float]:
    """DAVIS F: (F, precision, recall) of the mask boundaries, matched within the tolerance.

    Both boundaries empty -> (1, 1, 1); only one empty -> F = 0.
    """
    from scipy.ndimage import binary_dilation

    pred, gt = _np(pred).astype(bool), _np(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"masks differ in size: {pred.shape} vs {gt.shape}")
    bp, bg = mask_boundary(pred), mask_boundary(gt)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0, 1.0, 1.0
    if n_p == 0 or n_g == 0:
        return 0.0, float(n_p == 0), float(n_g == 0)
    disk = _disk(boundary_tolerance(gt.shape, bound_th))
    gt_zone = binary_dilation(bg, structure=disk)
    pred_zone = binary_dilation(bp, structure=disk)
    precision = float((bp & gt_zone).sum() / n_p)
    recall = float((bg & pred_zone).sum() / n_g)
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f, precision, recall


class VideoMeter:
    """DAVIS-2017 semi-supervised scores: J and F per object, mean over frames, then objects.

    update(name, pred_frames, gt_frames, n_objects): label maps (T, H, W) with 0 = background.
    As in the DAVIS-2017 evaluation the first frame (it is given) and the last frame are not
    scored by default; a frame is never dropped if that would leave none.
    """

    def __init__(self, bound_th: float = DAVIS_BOUND_TH, skip_first: bool = True, skip_last: bool = True):
        self.bound_th, self.skip_first, self.skip_last = bound_th, skip_first, skip_last
        self.objects: list[dict] = []

    def scored_frames(self, T: int) -> range:
        start = 1 if (self.skip_first and T > 1) else 0
        stop = T - 1 if (self.skip_last and T - 1 > start) else T
        return range(start, stop)

    def update(self, name: str, pred, gt, n_objects: int) -> dict[str, float]:
        pred, gt = _np(pred), _np(gt)
        frames = self.scored_frames(gt.shape[0])
        per_video = []
        for obj in range(1, n_objects + 1):
            js = [region_similarity(pred[t] == obj, gt[t] == obj) for t in frames]
            fs = [boundary_f_measure(pred[t] == obj, gt[t] == obj, self.bound_th)[0] for t in frames]
            rec = {"video": name, "object": obj, "J": float(np.mean(js)), "F": float(np.mean(fs))}
            self.objects.append(rec)
            per_video.append(rec)
        return {
            "J": float(np.mean([r["J"] for r in per_video])) if per_video else float("nan"),
            "F": float(np.mean([r["F"] for r in per_video])) if per_video else float("nan"),
        }

    def compute(self) -> dict[str, float]:
        if not self.objects:
            return {"J": float("nan"), "F": float("nan"), "JF": float("nan"), "objects": 0}
        j = float(np.mean([r["J"] for r in self.objects]))
        f = float(np.mean([r["F"] for r in self.objects]))
        return {"J": j, "F": f, "JF": (j + f) / 2, "objects": len(self.objects)}


def j_and_f(pred, gt, n_objects: int, bound_th: float = DAVIS_BOUND_TH, skip_first: bool = False,
            skip_last: bool = False) -> dict[str, float]:
    """J, F and J&F of one video's label maps (T, H, W), every frame scored by default."""
    meter = VideoMeter(bound_th, skip_first, skip_last)
    meter.update("video", pred, gt, n_objects)
    return meter.compute()


__all__ = [
    "ConfusionMatrix",
    "DepthMeter",
    "MattingMeter",
    "NormalMeter",
    "VideoMeter",
    "angular_error",
    "boundary_f_measure",
    "boundary_tolerance",
    "confusion_matrix",
    "delta_recall",
    "depth_rmse",
    "depth_scores",
    "j_and_f",
    "mask_boundary",
    "mean_iou",
    "normal_scores",
    "pixel_accuracy",
    "region_similarity",
    "segmentation_scores",
]
