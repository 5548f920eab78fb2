"""Click simulation and the interactive-segmentation metrics (the RITM / SimpleClick protocol).

Everything here is NumPy / SciPy on one object mask at a time; masks are (H, W) arrays with
1 = object, 0 = background and `IGNORE` (255) = not scored (GrabCut's and Berkeley's
uncertain boundary band).

Clicks (Sofiiuk et al., "Reviving iterative training with mask guidance for interactive
segmentation", 2022 - RITM's `Clicker`, which SimpleClick, Liu et al. ICCV 2023, reuses):
- the errors are the false negatives (object, predicted background) and the false positives
  (background, predicted object), both outside the ignore band;
- each error mask gets an exact Euclidean distance transform, computed on the mask padded
  with one background pixel, so the image border counts as a boundary too;
- pixels clicked before are excluded; the click goes to the pixel farthest from the boundary
  of its error region (the first such pixel in row-major order): positive when the largest
  false-negative distance beats the largest false-positive one, negative otherwise. That point
  lies in the thickest error region (not necessarily the largest by area).
- the first click, with an empty prediction, is therefore the object pixel farthest from the
  object's boundary.

Metrics (RITM `get_iou`, `compute_noc_metric`): IoU over non-ignored pixels; IoU@k is the
mean IoU after k clicks; NoC@t is the number of clicks until IoU >= t, `max_clicks` (20) when
never reached, averaged over objects; NoF@t is RITM's "over max" count: objects whose NoC@t is
`max_clicks`.
Predictions are binarised at 0.49 (RITM's `pred_thr`).

Click maps (SimpleClick's `DistMaps(use_disks=True, norm_radius=5)`): a disk of radius 5 px
around each click, one channel for positive and one for negative clicks; SimpleClick feeds the
previous prediction as a third channel (`with_prev_mask=True`), first in channel order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE = 255
PRED_THRESHOLD = 0.49  # RITM evaluate_sample(pred_thr=0.49)
MAX_CLICKS = 20  # RITM / SimpleClick max_clicks
NOC_THRESHOLDS = (0.85, 0.90)
CLICK_RADIUS = 5  # SimpleClick norm_radius=5, use_disks=True


@dataclass(frozen=True)
class Click:
    y: int
    x: int
    positive: bool


def distance_to_boundary(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each True pixel to the nearest False pixel or the image border
    (the mask is padded with one False pixel, as RITM pads before cv2.distanceTransform)."""
    from scipy.ndimage import distance_transform_edt

    padded = np.pad(np.asarray(mask, dtype=bool), 1, constant_values=False)
    return distance_transform_edt(padded)[1:-1, 1:-1]


def _farthest(dist: np.ndarray) -> tuple[int, int, float]:
    """(y, x, distance) of the first maximum in row-major order."""
    i = int(np.argmax(dist))
    y, x = divmod(i, dist.shape[1])
    return y, x, float(dist[y, x])


def next_click(gt: np.ndarray, pred: np.ndarray, clicked: np.ndarray | None = None) -> Click | None:
    """RITM's next click for an object mask `gt` (1 / 0 / IGNORE) and a binary prediction.

    `clicked` (bool, H x W) marks pixels clicked before; they are never chosen again.
    Returns None when there is no error left to click on.
    """
    gt = np.asarray(gt)
    valid = gt != IGNORE
    obj = gt == 1
    pred = np.asarray(pred, dtype=bool)
    fn = obj & ~pred & valid
    fp = ~obj & pred & valid
    keep = 1.0 if clicked is None else ~np.asarray(clicked, dtype=bool)
    fn_y, fn_x, fn_d = _farthest(distance_to_boundary(fn) * keep)
    fp_y, fp_x, fp_d = _farthest(distance_to_boundary(fp) * keep)
    if max(fn_d, fp_d) <= 0:
        return None
    if fn_d > fp_d:
        return Click(fn_y, fn_x, True)
    return Click(fp_y, fp_x, False)


def first_click(gt: np.ndarray) -> Click | None:
    """The object pixel farthest from the object's boundary (and the image border)."""
    return next_click(gt, np.zeros(np.shape(gt), dtype=bool))


def iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of the object (gt == 1) and a binary prediction over non-ignored pixels (RITM get_iou)."""
    gt = np.asarray(gt)
    valid = gt != IGNORE
    obj = gt == 1
    pred = np.asarray(pred, dtype=bool)
    union = int((valid & (obj | pred)).sum())
    return float((valid & obj & pred).sum()) / union if union else 1.0


def noc(ious: np.ndarray | list[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """Clicks until IoU >= threshold (1-based), max_clicks when never reached (RITM _get_noc)."""
    hits = np.asarray(ious, dtype=np.float64) >= threshold
    return int(np.argmax(hits)) + 1 if hits.any() else max_clicks


def click_maps(clicks: list[Click], shape: tuple[int, int], radius: float = CLICK_RADIUS) -> np.ndarray:
    """(2, H, W) float32 disk maps: channel 0 the positive clicks, channel 1 the negative ones.

    A pixel is on when its squared distance to a click is <= radius^2 (SimpleClick's disks).
    """
    H, W = shape
    out = np.zeros((2, H, W), dtype=np.float32)
    if not clicks:
        return out
    yy, xx = np.ogrid[:H, :W]
    for c in clicks:
        disk = (yy - c.y) ** 2 + (xx - c.x) ** 2 <= radius * radius
        out[0 if c.positive else 1][disk] = 1.0
    return out


@dataclass
class InteractiveMeter:
    """Per-object IoU after each click; `compute()` gives IoU@1, NoC@85/90, NoF@85/90."""

    max_clicks: int = MAX_CLICKS
    thresholds: tuple[float, ...] = NOC_THRESHOLDS
    ious: list[list[float]] = field(default_factory=list)

    def add(self, object_ious: list[float]) -> None:
        if not object_ious:
            raise ValueError("an object needs at least one click")
        self.ious.append([float(v) for v in object_ious])

    def compute(self) -> dict[str, Any]:
        n = len(self.ious)
        out: dict[str, Any] = {"objects": n}
        if not n:
            return {**out, "iou@1": float("nan")}
        out["iou@1"] = float(np.mean([o[0] for o in self.ious]))
        for t in self.thresholds:
            nocs = np.array([noc(o, t, self.max_clicks) for o in self.ious])
            key = f"{round(t * 100)}"
            out[f"noc@{key}"] = float(nocs.mean())
            out[f"nof@{key}"] = int((nocs == self.max_clicks).sum())  # RITM's "over max" count
        out["clicks"] = int(sum(len(o) for o in self.ious))
        return out


# ----------------------------------------------------------------------------------------
# training clicks (SimpleClick's MultiPointSampler, simplified)


def point_count_probs(n: int, gamma: float) -> np.ndarray:
    """p(k) proportional to gamma^k for k = 0..n-1 (RITM generate_probs)."""
    p = gamma ** np.arange(n, dtype=np.float64)
    return p / p.sum()


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=iterations)


def _border_band(mask: np.ndarray, ratio: float) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    r = int(np.ceil(ratio * np.sqrt(mask.sum())))
    if r < 1:
        return np.zeros_like(mask)
    return binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=r) & ~mask


@dataclass(frozen=True)
class TrainClickSampler:
    """Random clicks for one training object, after SimpleClick's SBD setup
    (`MultiPointSampler(24, prob_gamma=0.8)`): 1..24 positive clicks, p(k) ~ 0.8^k, uniform
    in the object eroded by 3 pixels (with probability 0.9, when > 10 pixels remain); 0..24
    negative clicks, each drawn from the background (p 0.1), other objects (0.4) or a border
    band of width ceil(0.1 sqrt(area)) around the object (0.5).

    Simplified: no object merging, no first click at the centre, no hierarchy.
    """

    max_points: int = 24
    gamma: float = 0.8
    erode_prob: float = 0.9
    erode_iters: int = 3
    neg_probs: tuple[float, float, float] = (0.1, 0.4, 0.5)  # bg, other objects, border
    border_ratio: float = 0.1

    def sample(self, obj: np.ndarray, others: np.ndarray | None, valid: np.ndarray | None,
               rng: np.random.Generator) -> list[Click]:
        obj = np.asarray(obj, dtype=bool)
        valid = np.ones_like(obj) if valid is None else np.asarray(valid, dtype=bool)
        pos_area = obj
        if rng.random() < self.erode_prob:
            eroded = _erode(obj, self.erode_iters)
            if eroded.sum() > 10:
                pos_area = eroded
        n_pos = 1 + int(rng.choice(self.max_points, p=point_count_probs(self.max_points, self.gamma)))
        clicks = [Click(int(y), int(x), True) for y, x in _pick(pos_area, n_pos, rng)]
        bg = ~obj & valid
        regions = [bg, (np.asarray(others, bool) & bg) if others is not None else bg, _border_band(obj, self.border_ratio) & valid]
        n_neg = int(rng.choice(self.max_points + 1, p=point_count_probs(self.max_points + 1, self.gamma)))
        for _ in range(n_neg):
            region = regions[int(rng.choice(3, p=self.neg_probs))]
            clicks += [Click(int(y), int(x), False) for y, x in _pick(region if region.any() else bg, 1, rng)]
        return clicks


def _pick(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.argwhere(mask)
    if not len(idx):
        return idx
    return idx[rng.integers(0, len(idx), size=n)]


__all__ = [
    "CLICK_RADIUS", "IGNORE", "MAX_CLICKS", "NOC_THRESHOLDS", "PRED_THRESHOLD", "Click", "InteractiveMeter", "TrainClickSampler",
    "click_maps", "distance_to_boundary", "first_click", "iou", "next_click", "noc", "point_count_probs",
]
