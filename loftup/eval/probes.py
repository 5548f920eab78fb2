"""Downstream probes on frozen upsampled features (the paper's protocols, section 4).

- seg: a linear layer (1x1 conv) per pixel; COCO-Stuff 27 / Cityscapes 19; AdamW 1e-4,
  batch 8, 10 epochs, 224 x 224 input and output; mIoU and pixel accuracy.
- depth / normals: a DPT-style head of 7 conv layers (Probe3D) - a 1x1 projection, two
  residual conv units (2 x 3x3 each), a 3x3 conv + ReLU and a 3x3 output conv; depth is read
  out of 256 depth bins (Adabins-style linear normalisation), normals are L2-normalised;
  AdamW 5e-4, 10 epochs; depth RMSE and delta recalls, normal angular RMSE and recalls.
- video: label propagation through feature affinity, no training (DAVIS-2017): each frame's
  labels are the softmax(similarity / 0.1)-weighted mix of the top-5 most similar pixels
  among the first frame and the 7 previous frames, within a (2*12+1)^2 window, features
  upsampled to image / 2; J, F and J&F.
- matting: a linear layer to alpha, MSE loss (the paper gives no optimiser: AdamW 1e-3,
  10 epochs here); MSE (and MAE) of the clipped matte.

Every linear / DPT head starts with a BatchNorm without affine parameters over the input
channels: at evaluation it is a fixed per-channel standardisation (still a linear map), so
one learning rate fits raw backbone features and layer-normed LoftUp features alike.

Predictions are made at the features' resolution and brought to the label size with the
source's `pred_resize` (nearest for the low-res baseline, bilinear otherwise).

Our choices where the paper is silent (all overridable): depth loss L1 on valid pixels,
normals loss 1 - cos; NAVI depth per-image relative in [0.01, 1] (Probe3D's relative depth),
no object-bounding-box crop; images resized (shorter side) and centre-cropped to `size`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, check_choice
from ..export.parity import compare
from . import metrics as M
from .datasets import IGNORE, SampleList, Video, resize_sample

PROBES = ("seg", "depth", "normals", "video", "matting")


@dataclass
class ProbeConfig:
    """Protocol settings; `probe_config(task)` fills in the paper's defaults for a task."""

    task: str = "seg"
    size: int | None = 224  # images: shorter side resized to `size`, centre crop size x size
    input_size: int | None = None  # backbone input (None = the resized image, rounded to the patch)
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-2
    hidden_dim: int = 512  # DPT head width
    n_bins: int = 256  # depth bins
    min_depth: float = 1e-3
    max_depth: float | None = None  # None: the largest valid depth of the training set
    relative_depth: bool | None = None  # None: the dataset's default (NAVI: relative, per image)
    context: int = 7  # video: previous frames used besides the first
    radius: int = 12  # video: neighbourhood radius in feature pixels
    topk: int = 5
    temperature: float = 0.1
    video_scale: float = 0.5  # video: features at this fraction of the frame size
    max_train: int | None = None
    max_eval: int | None = None
    cache_mb: int = 2048  # keep training features in memory when they fit
    plot_samples: int = 4
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "seg": dict(size=224, epochs=10, batch_size=8, lr=1e-4),
    "depth": dict(size=224, epochs=10, batch_size=8, lr=5e-4),
    "normals": dict(size=224, epochs=10, batch_size=8, lr=5e-4),
    "matting": dict(size=224, epochs=10, batch_size=8, lr=1e-3),
    "video": dict(size=None, batch_size=4, epochs=0),
}


def probe_config(task: str, **overrides: Any) -> ProbeConfig:
    """The paper's protocol for `task`, with any non-None override applied."""
    check_choice("probe", task, PROBES)
    fields = {**PROTOCOL_DEFAULTS[task], **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(fields) - set(ProbeConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown probe settings {sorted(unknown)}")
    cfg = ProbeConfig(task=task, **fields)
    for name in ("epochs", "batch_size", "hidden_dim", "n_bins", "topk"):
        if getattr(cfg, name) < (0 if name == "epochs" else 1):
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")
    return cfg


# ----------------------------------------------------------------------------------------
# heads


class LinearHead(nn.Module):
    """Per-pixel linear map: input standardisation (BatchNorm, no affine) + 1x1 conv."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_dim, affine=False)
        self.conv = nn.Conv2d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class ResidualConvUnit(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DPTHead(nn.Module):
    """7 conv layers on one feature map: 1x1 projection, 2 residual units, 3x3 + ReLU + 3x3 out."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_dim, affine=False)
        self.proj = nn.Conv2d(in_dim, hidden_dim, 1)
        self.fuse = nn.Sequential(ResidualConvUnit(hidden_dim), ResidualConvUnit(hidden_dim))
        self.out = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden_dim, out_dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fuse(self.proj(self.norm(x))))


class BinnedDepth(nn.Module):
    """Depth head output (B, n_bins, H, W) -> depth (B, H, W): bin centres weighted by
    relu(logits) + 0.1, normalised (uniform bins in [min_depth, max_depth])."""

    def __init__(self, head: nn.Module, min_depth: float, max_depth: float, n_bins: int):
        super().__init__()
        self.head = head
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, n_bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.relu(self.head(x)) + 0.1
        return torch.einsum("bkhw,k->bhw", w / w.sum(1, keepdim=True), self.bins)


# ----------------------------------------------------------------------------------------
# tasks: head, targets, loss, metric


def resize_pred(pred: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, K, h, w) or (B, h, w) predictions -> the label size, nearest or bilinear."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    squeeze = pred.dim() == 3
    x = pred[:, None] if squeeze else pred
    x = F.interpolate(x, size=tuple(size), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    return x[:, 0] if squeeze else x


class Task:
    """One probe's head, targets, loss and metric."""

    name = "task"
    primary = "metric"
    higher_is_better = True
    target_keys: tuple[str, ...] = ()

    def make_head(self, feat_dim: int, cfg: ProbeConfig) -> nn.Module:
        raise NotImplementedError

    def predict(self, head: nn.Module, feats: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        """Head output brought to the label size (what the loss and the metric see)."""
        return resize_pred(head(feats), size, mode)

    def loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def meter(self):
        raise NotImplementedError

    def update(self, meter, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def fit_data(self, samples: list[dict[str, Any]]) -> None:
        """Look at (some) training samples before the head is built (e.g. the depth range)."""


class SegTask(Task):
    name, primary = "seg", "miou"
    target_keys = ("label",)

    def __init__(self, num_classes: int, class_names: list[str] | None = None):
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]

    def make_head(self, feat_dim, cfg):
        return LinearHead(feat_dim, self.num_classes)

    def loss(self, pred, batch):
        return F.cross_entropy(pred, batch["label"], ignore_index=IGNORE)

    def meter(self):
        return M.ConfusionMatrix(self.num_classes)

    def update(self, meter, pred, batch):
        meter.update(pred.argmax(1), batch["label"])


class DepthTask(Task):
    name, primary, higher_is_better = "depth", "rmse", False
    target_keys = ("depth",)

    def __init__(self):
        self.max_depth: float | None = None

    def fit_data(self, samples):
        values = [float(s["depth"].max()) for s in samples if (s["depth"] > 0).any()]
        self.max_depth = max(values) if values else 1.0

    def make_head(self, feat_dim, cfg):
        max_depth = cfg.max_depth or self.max_depth or 10.0
        return BinnedDepth(DPTHead(feat_dim, cfg.n_bins, cfg.hidden_dim), cfg.min_depth, max_depth, cfg.n_bins)

    def loss(self, pred, batch):
        valid = batch["depth"] > 0
        if not valid.any():
            return pred.sum() * 0
        return F.l1_loss(pred[valid], batch["depth"][valid])

    def meter(self):
        return M.DepthMeter()

    def update(self, meter, pred, batch):
        meter.update(pred, batch["depth"])


class NormalsTask(Task):
    name, primary, higher_is_better = "normals", "rmse", False
    target_keys = ("normals",)

    def make_head(self, feat_dim, cfg):
        return DPTHead(feat_dim, 3, cfg.hidden_dim)

    def predict(self, head, feats, size, mode):
        return F.normalize(resize_pred(head(feats), size, mode), dim=1)  # (B, 3, H, W) unit

    def loss(self, pred, batch):
        gt = batch["normals"]  # (B, 3, H, W)
        valid = gt.norm(dim=1) > 0
        if not valid.any():
            return pred.sum() * 0
        cos = (pred * F.normalize(gt, dim=1)).sum(1)
        return (1 - cos)[valid].mean()

    def meter(self):
        return M.NormalMeter()

    def update(self, meter, pred, batch):
        gt = batch["normals"]
        meter.update(pred.permute(0, 2, 3, 1), gt.permute(0, 2, 3, 1), gt.norm(dim=1) > 0)


class MattingTask(Task):
    name, primary, higher_is_better = "matting", "mse", False
    target_keys = ("alpha",)

    def make_head(self, feat_dim, cfg):
        return LinearHead(feat_dim, 1)

    def predict(self, head, feats, size, mode):
        return resize_pred(head(feats), size, mode)[:, 0]

    def loss(self, pred, batch):
        return F.mse_loss(pred, batch["alpha"])

    def meter(self):
        return M.MattingMeter()

    def update(self, meter, pred, batch):
        meter.update(pred.clamp(0, 1), batch["alpha"])


def make_task(name: str, meta: dict[str, Any] | None = None) -> Task:
    """The Task object for a probe name; `meta` is a dataset's meta (class count for seg)."""
    meta = meta or {}
    check_choice("probe", name, PROBES)
    if name == "seg":
        if "num_classes" not in meta:
            raise ConfigError("the seg probe needs a segmentation dataset (COCO-Stuff 27 or Cityscapes)")
        return SegTask(int(meta["num_classes"]), meta.get("class_names"))
    if name == "depth":
        return DepthTask()
    if name == "normals":
        return NormalsTask()
    if name == "matting":
        return MattingTask()
    raise ConfigError("the video probe has no head; use evaluate_video")


# ----------------------------------------------------------------------------------------
# batches


def relative_depth(depth: np.ndarray) -> np.ndarray:
    """Per-image depth normalised to [0.01, 1] over valid pixels (Probe3D's relative depth); 0 stays 0."""
    valid = depth > 0
    if not valid.any():
        return depth
    lo, hi = float(depth[valid].min()), float(depth[valid].max())
    out = np.zeros_like(depth)
    out[valid] = (depth[valid] - lo) / max(0.01, hi - lo) * 0.99 + 0.01
    return out


def normalise_image(image: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (H, W, 3) -> (3, H, W) float32, (x / 255 - mean) / std."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).div_(255).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def prepare(sample: dict[str, Any], cfg: ProbeConfig, relative: bool) -> dict[str, Any]:
    sample = resize_sample(sample, cfg.size, crop=cfg.size is not None)
    if "depth" in sample and relative:
        sample["depth"] = relative_depth(sample["depth"])
    return sample


def collate(samples: list[dict[str, Any]], keys: tuple[str, ...], mean, std) -> dict[str, torch.Tensor]:
    batch = {"image": torch.stack([normalise_image(s["image"], mean, std) for s in samples])}
    for key in keys:
        if any(key not in s for s in samples):
            from ..errors import InputError

            raise InputError(f"samples have no {key!r} target (e.g. {samples[0].get('name')}); "
                             + ("add normals/ or intrinsics.json with fx to the data folder" if key == "normals" else "check --data"))
        arr = np.stack([s[key] for s in samples])
        t = torch.from_numpy(arr)
        if key == "normals":
            t = t.permute(0, 3, 1, 2)
        batch[key] = t.long() if key == "label" else t.float()
    return batch


def batches(data: SampleList, cfg: ProbeConfig, task: Task, mean, std, relative: bool, order=None) -> Iterator[tuple[list[int], list[dict], dict]]:
    """(indices, prepared samples, collated batch) over `data` in `order` (default: in order)."""
    order = list(range(len(data))) if order is None else list(order)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        samples = [prepare(data[i], cfg, relative) for i in idx]
        yield idx, samples, collate(samples, task.target_keys, mean, std)


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    # stderr: stdout carries the results table
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                    console=Console(stderr=True))


def _is_relative(data: SampleList, cfg: ProbeConfig) -> bool:
    return bool(data.meta.get("relative_depth", False) if cfg.relative_depth is None else cfg.relative_depth)


# ----------------------------------------------------------------------------------------
# train once, evaluate with any number of sources


def train_head(task: Task, source, data: SampleList, cfg: ProbeConfig, progress: bool = False,
               log: Callable[[str], None] | None = None) -> nn.Module:
    """Train the task's head on `source`'s frozen features of `data` (cfg.epochs, AdamW).

    Features are computed once and kept in memory when the whole training set fits in
    cfg.cache_mb, otherwise recomputed every epoch.
    """
    device = torch.device(cfg.device)
    data = data.subset(cfg.max_train)
    relative = _is_relative(data, cfg)
    torch.manual_seed(cfg.seed)
    if isinstance(task, DepthTask) and cfg.max_depth is None:
        task.fit_data([prepare(data[i], cfg, relative) for i in range(min(len(data), 64))])
    head = task.make_head(source.feat_dim, cfg).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cache: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = {}
    cache_bytes, gen = 0, torch.Generator().manual_seed(cfg.seed)
    mode = source.pred_resize
    with _progress(progress) as bar:
        job = bar.add_task(f"{task.name} probe on {source.name}", total=cfg.epochs * len(data)) if bar else None
        for epoch in range(cfg.epochs):
            head.train()
            order = torch.randperm(len(data), generator=gen).tolist()
            total, count = 0.0, 0
            if cache is not None and len(cache) == len(data):
                items = ((idx, torch.stack([cache[i][0] for i in idx]),
                          {k: torch.stack([cache[i][1][k] for i in idx]) for k in cache[idx[0]][1]})
                         for idx in (order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)))
            else:
                items = _feature_batches(source, data, cfg, task, relative, order)
            for idx, feats, targets in items:
                if cache is not None and len(cache) < len(data):
                    for j, i in enumerate(idx):
                        cache[i] = (feats[j], {k: v[j] for k, v in targets.items()})
                        cache_bytes += feats[j].numel() * 4 + sum(v[j].numel() * 4 for v in targets.values())
                    if cache_bytes * len(data) / max(len(cache), 1) > cfg.cache_mb * 2**20:
                        cache = None
                feats = feats.to(device)
                targets = {k: v.to(device) for k, v in targets.items()}
                pred = task.predict(head, feats, tuple(next(iter(targets.values())).shape[-2:]), mode)
                loss = task.loss(pred, targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                if bar:
                    bar.advance(job, len(idx))
            if log:
                log(f"  {source.name} epoch {epoch + 1}/{cfg.epochs}: loss {total / max(count, 1):.4f}")
    return head.eval()


def _feature_batches(source, data, cfg, task, relative, order):
    for idx, _, batch in batches(data, cfg, task, source.mean, source.std, relative, order):
        with torch.no_grad():
            feats = source.features(batch["image"].to(cfg.device)).float().cpu()
        yield idx, feats, {k: v for k, v in batch.items() if k != "image"}


@dataclass
class EvalResult:
    """Metrics per source, per-batch feature parity per compared pair, samples for pictures."""

    metrics: dict[str, dict[str, Any]]
    parity: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def evaluate(task: Task, heads: dict[str, nn.Module], sources: dict[str, Any], data: SampleList, cfg: ProbeConfig,
             pairs: list[tuple[str, str]] = (), progress: bool = False) -> EvalResult:
    """Evaluate each source with its head (`heads[name]`) on `data`.

    Several sources may share one head (parity: the reference's head on the engine's
    features). For each (a, b) in `pairs` the features of a and b are compared per batch.
    """
    device = torch.device(cfg.device)
    data = data.subset(cfg.max_eval)
    relative = _is_relative(data, cfg)
    first = next(iter(sources.values()))
    meters = {name: task.meter() for name in sources}
    parity: dict[str, list[dict[str, float]]] = {f"{a}~{b}": [] for a, b in pairs}
    samples: list[dict[str, Any]] = []
    with _progress(progress) as bar:
        job = bar.add_task(f"evaluating {task.name}", total=len(data)) if bar else None
        for idx, prepared, batch in batches(data, cfg, task, first.mean, first.std, relative):
            image = batch["image"].to(device)
            targets = {k: v.to(device) for k, v in batch.items() if k != "image"}
            size = tuple(next(iter(targets.values())).shape[-2:])
            feats, preds = {}, {}
            for name, src in sources.items():
                feats[name] = src.features(image).float()
                heads[name].eval()
                preds[name] = task.predict(heads[name], feats[name], size, src.pred_resize)
                task.update(meters[name], preds[name], targets)
            for a, b in pairs:
                parity[f"{a}~{b}"].append({"batch": len(parity[f"{a}~{b}"]), "images": len(idx), **compare(feats[a], feats[b])})
            for j in range(len(idx)):
                if len(samples) >= cfg.plot_samples:
                    break
                rec = {"name": prepared[j].get("name", str(idx[j])), "image": prepared[j]["image"],
                       "target": {k: v[j].cpu().numpy() for k, v in targets.items()},
                       "pred": {n: p[j].cpu().numpy() for n, p in preds.items()}}
                samples.append(rec)
            if bar:
                bar.advance(job, len(idx))
    return EvalResult({name: m.compute() for name, m in meters.items()}, parity, samples)


# ----------------------------------------------------------------------------------------
# video: label propagation


def _shifted(padded: torch.Tensor, r: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    return padded[..., r + dy : r + dy + h, r + dx : r + dx + w]


def _merge_window(query: torch.Tensor, key: torch.Tensor, labels: torch.Tensor, radius: int, best_sim: torch.Tensor,
                  best_lab: torch.Tensor, budget_bytes: int = 64 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge one context frame's window candidates into the running top-k.

    query, key (C, h, w) unit features; labels (K, h, w); best_sim (k, h, w); best_lab (k, K, h, w).
    """
    C, h, w = query.shape
    k = best_sim.shape[0]
    r = radius
    kp = F.pad(key, (r, r, r, r))
    lp = F.pad(labels, (r, r, r, r))
    valid = F.pad(torch.ones(1, h, w, dtype=query.dtype, device=query.device), (r, r, r, r))
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    block = max(1, budget_bytes // max(1, (C + labels.shape[0]) * h * w * 4))
    for s in range(0, len(offsets), block):
        chunk = offsets[s : s + block]
        keys = torch.stack([_shifted(kp, r, dy, dx, h, w) for dy, dx in chunk])  # (n, C, h, w)
        sims = (keys * query).sum(1)  # (n, h, w)
        ok = torch.stack([_shifted(valid, r, dy, dx, h, w)[0] for dy, dx in chunk]) > 0
        sims = sims.masked_fill(~ok, float("-inf"))
        labs = torch.stack([_shifted(lp, r, dy, dx, h, w) for dy, dx in chunk])  # (n, K, h, w)
        all_sim = torch.cat([best_sim, sims])
        all_lab = torch.cat([best_lab, labs])
        best_sim, top = all_sim.topk(k, dim=0)  # (k, h, w)
        best_lab = all_lab.gather(0, top[:, None].expand(-1, all_lab.shape[1], -1, -1))
    return best_sim, best_lab


def propagate_labels(feats: torch.Tensor, first_labels: torch.Tensor, context: int = 7, radius: int = 12, topk: int = 5,
                     temperature: float = 0.1) -> torch.Tensor:
    """Label propagation through feature affinity (DINO / the LoftUp protocol).

    feats (T, C, h, w) per-frame features; first_labels (K, h, w) soft labels of frame 0.
    Frame t's labels mix the top-k most similar pixels (cosine) among frame 0 and frames
    t-context..t-1 (their propagated labels), each within `radius` pixels, weighted by
    softmax(similarity / temperature). Returns (T, K, h, w) soft labels (frame 0 as given).
    """
    feats = F.normalize(feats.float(), dim=1)
    T, _, h, w = feats.shape
    out = [first_labels.float()]
    for t in range(1, T):
        context_frames = [0] + list(range(max(1, t - context), t))
        best_sim = torch.full((topk, h, w), float("-inf"), device=feats.device)
        best_lab = torch.zeros((topk, first_labels.shape[0], h, w), device=feats.device)
        for s in context_frames:
            best_sim, best_lab = _merge_window(feats[t], feats[s], out[s], radius, best_sim, best_lab)
        weights = torch.softmax(best_sim / temperature, dim=0)  # (k, h, w); -inf -> 0
        out.append((weights[:, None] * best_lab).sum(0))
    return torch.stack(out)


def onehot(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(H, W) int labels 0..n-1 -> (n, H, W) float."""
    return F.one_hot(labels.long().clamp(0, n - 1), n).permute(2, 0, 1).float()


@torch.no_grad()
def evaluate_video(sources: dict[str, Any], videos: list[Video], cfg: ProbeConfig, pairs: list[tuple[str, str]] = (),
                   progress: bool = False) -> EvalResult:
    """J, F and J&F of label propagation on each source's features (no training)."""
    device = torch.device(cfg.device)
    if cfg.max_eval is not None:
        videos = videos[: cfg.max_eval]
    meters = {name: M.VideoMeter() for name in sources}
    parity: dict[str, list[dict[str, float]]] = {f"{a}~{b}": [] for a, b in pairs}
    samples: list[dict[str, Any]] = []
    first = next(iter(sources.values()))
    with _progress(progress) as bar:
        job = bar.add_task("propagating labels", total=len(videos)) if bar else None
        for video in videos:
            frames, labels, n_obj = video.load()
            if cfg.size is not None:
                resized = [resize_sample({"image": f, "label": l}, cfg.size, crop=False) for f, l in zip(frames, labels)]
                frames = np.stack([r["image"] for r in resized])
                labels = np.stack([r["label"] for r in resized])
            T, H, W = labels.shape
            out_size = (max(1, round(H * cfg.video_scale)), max(1, round(W * cfg.video_scale)))
            images = torch.stack([normalise_image(f, first.mean, first.std) for f in frames]).to(device)
            preds = {}
            feats_all: dict[str, list[torch.Tensor]] = {name: [] for name in sources}
            for s in range(0, T, cfg.batch_size):
                chunk = images[s : s + cfg.batch_size]
                for name, src in sources.items():
                    feats_all[name].append(src.features(chunk, out_size).float())
                for a, b in pairs:
                    parity[f"{a}~{b}"].append({"batch": len(parity[f"{a}~{b}"]), "video": video.name, "images": len(chunk),
                                               **compare(feats_all[a][-1], feats_all[b][-1])})
            gt0 = onehot(torch.from_numpy(labels[0]).to(device), n_obj + 1)
            for name, src in sources.items():
                feats = torch.cat(feats_all[name])
                first_soft = F.interpolate(gt0[None], size=feats.shape[-2:], mode="area")[0]
                soft = propagate_labels(feats, first_soft, cfg.context, cfg.radius, cfg.topk, cfg.temperature)
                soft = resize_pred(soft, (H, W), src.pred_resize)
                pred = soft.argmax(1).cpu().numpy()
                pred[0] = labels[0]
                meters[name].update(video.name, pred, labels, n_obj)
                preds[name] = pred
            if len(samples) < cfg.plot_samples:
                t = T // 2
                samples.append({"name": f"{video.name}/{t}", "image": frames[t], "target": {"label": labels[t]},
                                "pred": {n: p[t] for n, p in preds.items()}})
            if bar:
                bar.advance(job)
    return EvalResult({name: m.compute() for name, m in meters.items()}, parity, samples)


__all__ = [
    "PROBES",
    "PROTOCOL_DEFAULTS",
    "BinnedDepth",
    "DPTHead",
    "DepthTask",
    "EvalResult",
    "LinearHead",
    "MattingTask",
    "NormalsTask",
    "ProbeConfig",
    "SegTask",
    "Task",
    "evaluate",
    "evaluate_video",
    "make_task",
    "probe_config",
    "propagate_labels",
    "relative_depth",
    "train_head",
]
