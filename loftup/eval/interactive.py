"""The interactive-segmentation probe (`loftup eval --probe interactive`), after the LoftUp
supplement (appendix A.2): a frozen backbone; a one-layer click encoder whose output is added
to the patch embeddings; the upsampler under test; a three-layer convolutional decoder on the
upsampled features; trained on SBD with the normalized focal loss; IoU after one click on
GrabCut, Berkeley and DAVIS (LoftUp, DINOv2-S/14: 78.49 / 65.24 / 67.31), and NoC@85/90 with
RITM's iterative click simulation (`loftup.eval.clicks`).

    image ──(clicks: disks + previous mask, 3 maps at the image size)──▶ click encoder (conv p x p, stride p)
          ──▶ added to the patch tokens (`DinoViT(x, patch_bias=...)`) ──▶ lr feats
          ──▶ upsampler under test ──▶ hr feats ──▶ decoder (3 convs) ──▶ object logit per pixel

Defaults and where they come from:
- click encoder: SimpleClick's `patch_embed_coords` (Liu et al., ICCV 2023): a PatchEmbed conv
  with kernel = stride = the patch size on 3 maps (previous prediction, positive disks,
  negative disks; disks of radius 5 px, `norm_radius=5, use_disks=True, with_prev_mask=True`);
  its output is added to the patch tokens after the position embedding (addition commutes, so
  before or after it is the same sum).
- decoder: 3 conv layers (3x3 -> ReLU -> 3x3 -> ReLU -> 1x1) of width `hidden_dim` (128 here;
  the supplement gives no width), after the non-affine BatchNorm every probe head here
  starts with (a fixed standardisation at evaluation).
- loss: RITM's `NormalizedFocalLossSigmoid` with SimpleClick's SBD setting alpha 0.5, gamma 2:
  focal weights (1 - p_t)^gamma rescaled per image to sum to the number of valid pixels
  (the rescaling is not differentiated), averaged over valid pixels.
- optimiser: Adam, lr 5e-5, batch 8, 20 epochs (the supplement).
- training clicks: SimpleClick's sampler, simplified (`clicks.TrainClickSampler`), plus RITM's
  iterative training: 0..3 (`next_clicks`) extra clicks from the model's own errors, found
  without gradients, with the previous prediction fed back (`max_num_next_clicks=3`).
- images: shorter side `size` (224); training crops size x size (centre), evaluation keeps the
  whole image; the backbone sees the pipeline's input (`loftup.pipeline`), and so do the click
  maps (the same bilinear rule, so a map and its image stay aligned); metrics are computed at
  that size, not at the original resolution.
- evaluation: RITM's protocol - clicks at the farthest point of the errors, prediction > 0.49,
  up to 20 clicks, an object stops at IoU >= 0.90 (enough for NoC@85/90 and IoU@1).

Engine parity: the click encoder changes the backbone's input tokens, so every source shares
one PyTorch backbone pass *with* the click embedding (`PromptedRunner`), and an engine is used
in its upsampler form `engine(lr_feats, image)` on those features; a pipeline engine (backbone
inside) cannot take the click embedding and is refused. The head (encoder + decoder) is trained
once on the reference and then drives both; per-object feature parity is measured at the first
click, where the inputs of both are identical by construction (later clicks follow each
source's own predictions, and their effect shows in the metrics); the largest difference of
the predicted probabilities after that first click is reported too (`prob_max_abs`).

Checkpoints: each trained head is written as `interactive_head_<source>.safetensors` in --out
(tensors `encoder.*`, `decoder.*`; metadata: kind, channels, patch size, width, backbone, what
it was trained on) and loaded again with `--head FILE` (no training: that head then drives
every source).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError
from . import clicks as C
from .upsamplers import BackboneRunner

HEAD_KIND = "loftup-interactive-head"
PRIMARY = "iou@1"


@dataclass
class InteractiveConfig:
    """Protocol settings; the defaults are the supplement's / SimpleClick's (module doc)."""

    size: int | None = 224
    input_size: int | None = None
    epochs: int = 20
    batch_size: int = 8
    lr: float = 5e-5
    hidden_dim: int = 128
    alpha: float = 0.5  # NFL alpha (SimpleClick SBD config)
    gamma: float = 2.0  # NFL gamma
    click_radius: float = C.CLICK_RADIUS
    max_clicks: int = C.MAX_CLICKS
    stop_iou: float = 0.90
    pred_threshold: float = C.PRED_THRESHOLD
    next_clicks: int = 3  # RITM max_num_next_clicks
    min_object_area: int = 80  # objects smaller than this after the crop are not trained on
    max_train: int | None = None
    max_eval: int | None = None
    plot_samples: int = 4
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interactive_config(**overrides: Any) -> InteractiveConfig:
    """The protocol with every non-None override applied; unknown keys are ignored by the caller."""
    known = {k: v for k, v in overrides.items() if v is not None and k in InteractiveConfig.__dataclass_fields__}
    cfg = InteractiveConfig(**known)
    for name in ("epochs", "batch_size", "hidden_dim", "max_clicks"):
        if getattr(cfg, name) < (0 if name == "epochs" else 1):
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")
    return cfg


# ----------------------------------------------------------------------------------------
# modules


class ClickEncoder(nn.Module):
    """One conv layer, kernel = stride = patch size: 3 click maps -> (B, C, H/p, W/p) patch bias."""

    def __init__(self, embed_dim: int, patch_size: int, in_maps: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_maps, embed_dim, patch_size, stride=patch_size)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.proj(maps)


class ClickDecoder(nn.Module):
    """Three conv layers on the upsampled features -> one object logit per pixel."""

    def __init__(self, in_dim: int, hidden_dim: int = 128):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_dim, affine=False)
        self.conv1 = nn.Conv2d(in_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden_dim, 1, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(self.norm(feats)))
        return self.conv3(F.relu(self.conv2(x)))


class ClickHead(nn.Module):
    """What the probe trains: the click encoder and the decoder, saved together."""

    def __init__(self, embed_dim: int, patch_size: int, hidden_dim: int = 128):
        super().__init__()
        self.embed_dim, self.patch_size, self.hidden_dim = int(embed_dim), int(patch_size), int(hidden_dim)
        self.encoder = ClickEncoder(embed_dim, patch_size)
        self.decoder = ClickDecoder(embed_dim, hidden_dim)


def normalized_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, gamma: float = 2.0,
                          eps: float = 1e-12) -> torch.Tensor:
    """RITM's normalized focal loss (sigmoid), mean over the batch.

    logits (B, H, W); target (B, H, W) with 1 object, 0 background, IGNORE not counted. Per
    image: sum_i a_i w_i (-log p_t,i) / N with w_i = (1 - p_t,i)^gamma * N / sum_j (1 - p_t,j)^gamma
    (N valid pixels, the factor not differentiated), a_i = alpha on the object, 1 - alpha elsewhere.
    """
    valid = target != C.IGNORE
    obj = target == 1
    p = torch.sigmoid(logits)
    pt = torch.where(valid, torch.where(obj, p, 1 - p), torch.ones_like(p))
    log_pt = torch.where(obj, F.logsigmoid(logits), F.logsigmoid(-logits))
    a = torch.where(obj, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha)) * valid
    beta = (1 - pt) ** gamma
    n_valid = valid.sum((-2, -1), keepdim=True).to(p.dtype)
    mult = (n_valid / (beta.sum((-2, -1), keepdim=True) + eps)).detach()
    loss = -a * beta * mult * log_pt.clamp(max=0.0)
    per_image = (loss * valid).sum((-2, -1)) / (n_valid[..., 0, 0] + eps)
    return per_image.mean()


# ----------------------------------------------------------------------------------------
# the backbone pass with the click embedding


def patch_bias_model(backbone: nn.Module) -> nn.Module:
    """The module of `backbone` that takes `patch_bias=` (our ViT, possibly inside a `Backbone`)."""
    for m in (backbone, getattr(backbone, "model", None)):
        if m is not None and getattr(m, "accepts_patch_bias", False):
            return m
    name = getattr(backbone, "name", type(backbone).__name__)
    raise ConfigError(f"backbone {name!r} has no hook to add a click embedding to its patch tokens; "
                      "the interactive probe runs on our DINOv2 ViTs (--backbone dinov2_vits14, ...)")


class PromptedRunner(BackboneRunner):
    """A `BackboneRunner` whose backbone pass adds the click encoder's output to the patch tokens.

    Set the click maps (B, 3, H, W) at the image size with `set_prompts` and the encoder of the
    head in use with `encoder`; every source that shares this runner then sees features of the
    prompted image. Called under `grad=True` it keeps gradients (training the encoder through
    the frozen backbone); otherwise it runs without them and reuses its last result for the
    same image, maps and encoder (several upsamplers on one click cost one backbone pass).
    """

    def __init__(self, base: BackboneRunner):
        super().__init__(base.backbone, base.input_size)
        self.vit = patch_bias_model(base.backbone)
        self.encoder: nn.Module | None = None
        self.maps: torch.Tensor | None = None
        self.grad = False
        self._memo: tuple[Any, ...] | None = None

    def set_prompts(self, maps: torch.Tensor) -> None:
        self.maps = maps

    def lr_features(self, image: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        from ..pipeline import backbone_input, guidance_image

        if self.maps is None or self.encoder is None:
            raise ConfigError("PromptedRunner needs click maps (set_prompts) and an encoder before it runs")
        if tuple(self.maps.shape[-2:]) != tuple(image.shape[-2:]) or self.maps.shape[0] != image.shape[0]:
            raise InputError(f"click maps {tuple(self.maps.shape)} do not match the image batch {tuple(image.shape)}")
        x = backbone_input(guidance_image(image, out_size), self.patch_size, self.input_size)
        maps = backbone_input(guidance_image(self.maps.to(image), out_size), self.patch_size, self.input_size)
        return self.vit(x, patch_bias=self.encoder(maps)).float()

    def __call__(self, image: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        if out_size is not None and tuple(out_size) == tuple(image.shape[-2:]):
            out_size = None  # the same pass whether a source names the image's own size or not
        if self.grad:
            return self.lr_features(image, out_size)
        key = (id(image), image._version, tuple(image.shape), tuple(out_size) if out_size else None, id(self.encoder))
        memo = self._memo
        if memo is not None and memo[0] == key and memo[1] is image and torch.equal(memo[2], self.maps):
            return memo[3]
        with torch.no_grad():
            lr = self.lr_features(image, out_size)
        self._memo = (key, image, self.maps.clone(), lr)
        return lr


def trainable_features(src, image: torch.Tensor) -> torch.Tensor:
    """`src.features(image)` with gradients flowing back to the click encoder.

    PyTorch upsamplers run their module directly (the reference engine's copy, frozen) and
    interpolation baselines their own code; an exported engine cannot be trained through.
    """
    from ..pipeline import upsample_to_guidance
    from .upsamplers import InterpolatedFeatures, LoftUpFeatures, LowResFeatures

    if isinstance(src, LoftUpFeatures):
        model = src.engine.model
        model.requires_grad_(False)
        return upsample_to_guidance(model, src.runner(image), src.guidance(image, None))
    if isinstance(src, (LowResFeatures, InterpolatedFeatures)):
        return type(src).features.__wrapped__(src, image)  # the same code, without its no_grad
    raise ConfigError(f"the interactive head cannot be trained through {src.name!r} ({type(src).__name__}); "
                      "it is trained on the reference and reused for the engine")


# ----------------------------------------------------------------------------------------
# batches


def build_maps(click_lists: list[list[C.Click]], prev: np.ndarray, radius: float) -> torch.Tensor:
    """(B, 3, H, W): previous prediction, positive disks, negative disks (SimpleClick's order)."""
    B, H, W = prev.shape
    out = np.zeros((B, 3, H, W), dtype=np.float32)
    out[:, 0] = prev
    for b, cl in enumerate(click_lists):
        out[b, 1:] = C.click_maps(cl, (H, W), radius)
    return torch.from_numpy(out)


def predict(src, runner: PromptedRunner, head: ClickHead, image: torch.Tensor, maps: torch.Tensor,
            grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, H, W) at the image size, the features the decoder saw)."""
    from .probes import resize_pred

    runner.encoder = head.encoder
    runner.set_prompts(maps.to(image.device))
    runner.grad = grad
    try:
        feats = trainable_features(src, image) if grad else src.features(image).float()
    finally:
        runner.grad = False
    logits = resize_pred(head.decoder(feats), tuple(image.shape[-2:]), src.pred_resize)[:, 0]
    return logits, feats


def _training_object(sample: dict[str, Any], cfg: InteractiveConfig, rng: np.random.Generator) -> dict[str, Any] | None:
    """A resized, cropped training sample with one object picked at random (None: no object)."""
    from .datasets import resize_sample

    s = resize_sample(sample, cfg.size, crop=cfg.size is not None)
    if "instances" in s:
        inst = s["instances"]
        ids = [int(i) for i in np.unique(inst) if i > 0 and (inst == i).sum() >= cfg.min_object_area]
        if not ids:
            return None
        obj = ids[int(rng.integers(len(ids)))]
        return {"image": s["image"], "mask": (inst == obj).astype(np.int64), "others": (inst > 0) & (inst != obj)}
    if not (s["mask"] == 1).sum() >= cfg.min_object_area:
        return None
    return {"image": s["image"], "mask": s["mask"], "others": None}


def _collate(objs: list[dict[str, Any]], mean, std, device) -> tuple[torch.Tensor, np.ndarray]:
    from .probes import normalise_image

    image = torch.stack([normalise_image(o["image"], mean, std) for o in objs]).to(device)
    return image, np.stack([o["mask"] for o in objs])


# ----------------------------------------------------------------------------------------
# training


def train_click_head(src, runner: PromptedRunner, data, cfg: InteractiveConfig,
                     log: Callable[[str], None] | None = None) -> ClickHead:
    """Train a click encoder + decoder on `src`'s prompted features of `data` (Adam, NFL)."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head = ClickHead(src.feat_dim, runner.patch_size, cfg.hidden_dim).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    sampler = C.TrainClickSampler()
    data = data.subset(cfg.max_train)
    for epoch in range(cfg.epochs):
        total, count, skipped = 0.0, 0, 0
        order = rng.permutation(len(data)).tolist()
        for start in range(0, len(order), cfg.batch_size):
            objs = [o for o in (_training_object(data[i], cfg, rng) for i in order[start : start + cfg.batch_size]) if o is not None]
            skipped += min(cfg.batch_size, len(order) - start) - len(objs)
            if not objs:
                continue
            image, target = _collate(objs, src.mean, src.std, device)
            click_lists = [sampler.sample(o["mask"] == 1, o["others"], o["mask"] != C.IGNORE, rng) for o in objs]
            prev = np.zeros(target.shape, dtype=np.float32)
            _iterate_clicks(src, runner, head, image, target, click_lists, prev, int(rng.integers(0, cfg.next_clicks + 1)), cfg)
            head.train()
            logits, _ = predict(src, runner, head, image, build_maps(click_lists, prev, cfg.click_radius), grad=True)
            loss = normalized_focal_loss(logits, torch.from_numpy(target).to(device), cfg.alpha, cfg.gamma)
            if not torch.isfinite(loss):
                from ..errors import TrainingError

                raise TrainingError(f"the interactive probe's loss is {float(loss)} on {src.name}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(objs)
            count += len(objs)
        if log:
            note = f", {skipped} images without a trainable object" if skipped else ""
            log(f"  {src.name} epoch {epoch + 1}/{cfg.epochs}: NFL {total / max(count, 1):.4f} over {count} objects{note}")
    return head.eval()


@torch.no_grad()
def _iterate_clicks(src, runner, head, image, target, click_lists, prev, n: int, cfg: InteractiveConfig) -> None:
    """RITM's iterative training: n rounds of predict -> next click from the errors, in place."""
    if n <= 0:
        return
    head.eval()
    clicked = np.zeros(target.shape, dtype=bool)
    for b, cl in enumerate(click_lists):
        for c in cl:
            clicked[b, c.y, c.x] = True
    for _ in range(n):
        logits, _ = predict(src, runner, head, image, build_maps(click_lists, prev, cfg.click_radius))
        prev[:] = torch.sigmoid(logits).cpu().numpy()
        for b in range(len(click_lists)):
            c = C.next_click(target[b], prev[b] > cfg.pred_threshold, clicked[b])
            if c is not None:
                click_lists[b].append(c)
                clicked[b, c.y, c.x] = True


# ----------------------------------------------------------------------------------------
# evaluation


@dataclass
class InteractiveResult:
    metrics: dict[str, dict[str, Any]]
    parity: dict[str, list[dict[str, float]]]
    samples: list[dict[str, Any]]


def _eval_objects(data, cfg: InteractiveConfig):
    from .interactive_data import sbd_eval_objects

    n = 0
    for i in range(len(data)):
        sample = data[i]
        for obj in (sbd_eval_objects(sample) if "instances" in sample else [sample]):
            if cfg.max_eval is not None and n >= cfg.max_eval:
                return
            n += 1
            yield obj


@torch.no_grad()
def evaluate_interactive(sources: dict[str, Any], heads: dict[str, ClickHead], runner: PromptedRunner, data,
                         cfg: InteractiveConfig, pairs: list[tuple[str, str]] = (),
                         log: Callable[[str], None] | None = None) -> InteractiveResult:
    """RITM's click loop for every object and source; IoU@1, NoC@85/90; parity at the first click."""
    from ..export.parity import compare
    from .datasets import resize_sample
    from .probes import normalise_image

    device = torch.device(cfg.device)
    first = next(iter(sources.values()))
    meters = {name: C.InteractiveMeter(cfg.max_clicks) for name in sources}
    parity: dict[str, list[dict[str, float]]] = {f"{a}~{b}": [] for a, b in pairs}
    samples: list[dict[str, Any]] = []
    for head in heads.values():
        head.eval()
    for n_obj, obj in enumerate(_eval_objects(data, cfg)):
        s = resize_sample(obj, cfg.size, crop=False)
        gt = s["mask"]
        if not (gt == 1).any():
            continue
        image = normalise_image(s["image"], first.mean, first.std)[None].to(device)
        states = {name: {"clicks": [], "clicked": np.zeros(gt.shape, bool), "prev": np.zeros(gt.shape, np.float32), "ious": []}
                  for name in sources}
        active = set(sources)
        first_feats, first_probs = {}, {}
        for k in range(cfg.max_clicks):
            for name, src in sources.items():
                if name not in active:
                    continue
                st = states[name]
                c = C.next_click(gt, st["prev"] > cfg.pred_threshold, st["clicked"])
                if c is None:  # nothing left to click on
                    active.discard(name)
                    continue
                st["clicks"].append(c)
                st["clicked"][c.y, c.x] = True
                logits, feats = predict(src, runner, heads[name], image, build_maps([st["clicks"]], st["prev"][None], cfg.click_radius))
                st["prev"] = torch.sigmoid(logits[0]).float().cpu().numpy()
                st["ious"].append(C.iou(gt, st["prev"] > cfg.pred_threshold))
                if k == 0:
                    first_feats[name], first_probs[name] = feats, st["prev"]
                if st["ious"][-1] >= cfg.stop_iou:
                    active.discard(name)
            if k == 0:
                for a, b in pairs:
                    parity[f"{a}~{b}"].append({"batch": len(parity[f"{a}~{b}"]), "object": obj.get("name", str(n_obj)),
                                               "images": 1, **compare(first_feats[a], first_feats[b]),
                                               "prob_max_abs": float(np.abs(first_probs[a] - first_probs[b]).max()),
                                               "prob_std": float(first_probs[a].std())})
            if not active:
                break
        for name in sources:
            if states[name]["ious"]:
                meters[name].add(states[name]["ious"])
        if len(samples) < cfg.plot_samples:
            c0 = states[next(iter(states))]["clicks"][0]
            samples.append({"name": obj.get("name", str(n_obj)), "image": _mark_click(s["image"], c0),
                            "target": {"mask": np.where(gt == C.IGNORE, 0.5, gt).astype(np.float32)},
                            "pred": dict(first_probs)})
    return InteractiveResult({name: m.compute() for name, m in meters.items()}, parity, samples)


def _mark_click(image: np.ndarray, click: C.Click) -> np.ndarray:
    """A copy of the image with the first click drawn as a green square (for the pictures)."""
    r = max(1, min(image.shape[:2]) // 80)
    out = np.array(image, copy=True)
    out[max(0, click.y - r) : click.y + r + 1, max(0, click.x - r) : click.x + r + 1] = (0, 255, 0)
    return out


# ----------------------------------------------------------------------------------------
# checkpoints


def save_click_head(head: ClickHead, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the head as safetensors (atomically); metadata says what it is and how it was made."""
    from safetensors.torch import save_file

    from ..io import atomic_write

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    metadata = {"kind": HEAD_KIND, "embed_dim": str(head.embed_dim), "patch_size": str(head.patch_size),
                "hidden_dim": str(head.hidden_dim), "meta": json.dumps(meta or {})}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def load_click_head(path: str | Path, embed_dim: int | None = None, patch_size: int | None = None) -> ClickHead:
    """A head saved by `save_click_head`; CheckpointError when it is another file or does not fit."""
    from ..io import read_tensors, state_dict_mismatch

    tensors, meta = read_tensors(path)
    if meta.get("kind") != HEAD_KIND:
        raise CheckpointError(f"{path} is not an interactive-probe head (no '{HEAD_KIND}' in its metadata); "
                              "pass a interactive_head_*.safetensors written by `loftup eval --probe interactive`")
    try:
        dims = {k: int(meta[k]) for k in ("embed_dim", "patch_size", "hidden_dim")}
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: the head's metadata lacks its sizes; write it again with loftup eval") from None
    for what, want in (("embed_dim", embed_dim), ("patch_size", patch_size)):
        if want is not None and dims[what] != int(want):
            raise CheckpointError(f"head {Path(path).name} was trained for {what} {dims[what]} but the backbone has {want}; "
                                  "use a head trained with this backbone")
    head = ClickHead(**dims)
    problem = state_dict_mismatch(head, tensors)
    if problem:
        raise CheckpointError(f"head {Path(path).name} does not fit its own metadata: {problem}")
    head.load_state_dict(tensors, strict=False)
    head.meta = json.loads(meta.get("meta") or "{}")
    return head.eval()


# ----------------------------------------------------------------------------------------
# `loftup eval --probe interactive`


COLUMNS = [("iou@1", "IoU@1 %", 100, ".2f"), ("noc@85", "NoC@85", 1, ".2f"), ("noc@90", "NoC@90", 1, ".2f"),
           ("nof@85", "NoF@85", 1, "d"), ("nof@90", "NoF@90", 1, "d"), ("objects", "objects", 1, "d")]


def metrics_table(metrics: dict[str, dict[str, Any]], delta: dict[str, float] | None = None) -> str:
    from .report import markdown_table

    def cell(v, scale, fmt, sign=""):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return format(v * scale if fmt != "d" else int(v), sign + (fmt if fmt != "d" else "d"))

    rows = [[name] + [cell(m.get(k), s, f) for k, _, s, f in COLUMNS] for name, m in metrics.items()]
    if delta is not None:
        rows.append(["delta"] + [cell(delta.get(k), s, ".2f" if f == "d" else f, "+") for k, _, s, f in COLUMNS])
    return markdown_table(["upsampler"] + [h for _, h, _, _ in COLUMNS], rows)


CONFIG = InteractiveConfig  # what --set may change (eval.runner PROBE_MODULES protocol)


def probe_config(opts, device: str) -> InteractiveConfig:
    """The protocol with the command line's overrides (--set is applied by the runner)."""
    return replace(interactive_config(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, size=opts.size,
                                      input_size=opts.input_size, hidden_dim=opts.hidden_dim, max_train=opts.max_train,
                                      max_eval=opts.max_eval, seed=opts.seed), device=device)


def open_data(opts) -> tuple[Any, Any, Path | None]:
    """(SBD training set or None, evaluation set, --head file or None); bad input fails here,
    before any model is loaded."""
    from .interactive_data import open_interactive

    train_data, head_path = getattr(opts, "train_data", None), getattr(opts, "head", None)
    if train_data is not None and head_path is not None:
        raise ConfigError("--train-data and --head exclude each other: train a head on SBD, or reuse a saved one")
    if train_data is None and head_path is None:
        raise InputError("the interactive probe trains its click encoder and decoder on SBD: pass --train-data SBD_DIR, "
                         "or --head interactive_head_*.safetensors from an earlier run")
    if head_path is not None and not Path(head_path).is_file():
        raise CheckpointError(f"--head {head_path} does not exist; pass an interactive_head_*.safetensors file")
    val = open_interactive(opts.data, opts.layout, split="val")
    train = open_interactive(train_data, "auto", split="train") if train_data is not None else None
    return train, val, head_path


def _heads(plan, runner: PromptedRunner, cfg: InteractiveConfig, train, head_path, out: Path, log):
    """{source: head}, {source: what its head was trained on}, {source: saved file}."""
    if head_path is not None:
        loaded = load_click_head(head_path, runner.embed_dim, runner.patch_size).to(cfg.device)
        origin = f"{Path(head_path).name} ({loaded.meta.get('trained_on', '?')})"
        return {n: loaded for n in plan.sources}, {n: origin for n in plan.sources}, {}
    heads, trained_on, files = {}, {}, {}
    for name, src in plan.sources.items():
        if name in plan.shared:
            continue
        log(f"training the click encoder + decoder on {name} ({cfg.epochs} epochs, {len(train.subset(cfg.max_train))} images)")
        heads[name] = train_click_head(src, runner, train, cfg, log)
        trained_on[name] = name
        path = out / f"interactive_head_{name.replace(':', '_')}.safetensors"
        files[name] = str(save_click_head(heads[name], path, {"trained_on": name, "backbone": plan.backbone, "protocol": cfg.to_dict()}))
    for name, owner in plan.shared.items():
        heads[name], trained_on[name] = heads[owner], owner
    return heads, trained_on, files


def run(opts, plan, cfg: InteractiveConfig, data, out: Path, atol: float, rtol: float,
        log: Callable[[str], None]) -> tuple[dict[str, Any], str, Any]:
    """`loftup eval --probe interactive` after the runner's planning: (results to merge, table, ParityReport or None)."""
    from .parity import ParityReport, compare_metrics, summarize_features

    train, val, head_path = data
    if plan.handle is not None and plan.handle.scope == "pipeline":
        raise ConfigError(f"engine {plan.handle.path.name} is a pipeline engine: its backbone cannot take the click embedding; "
                          "export it with --scope upsampler for the interactive probe")
    runner = PromptedRunner(plan.runner)
    for src in plan.sources.values():
        src.runner = runner
    heads, trained_on, files = _heads(plan, runner, cfg, train, head_path, out, log)
    result = evaluate_interactive(plan.sources, heads, runner, val, cfg, plan.pairs, log)
    parity = None
    if plan.handle is not None:
        delta, failures = compare_metrics(result.metrics["reference"], result.metrics["engine"], atol, rtol)
        batches = result.parity.get("reference~engine", [])
        parity = ParityReport("interactive", PRIMARY, result.metrics["reference"], result.metrics["engine"], delta,
                              summarize_features(batches), batches, atol, rtol, failures)
    table = metrics_table(result.metrics, parity.delta if parity else None)
    if parity is not None and parity.batches:  # the decoder's output after the first click, object by object
        parity.features["prob_max_abs"] = max(b["prob_max_abs"] for b in parity.batches)
    found: dict[str, Any] = {"metrics": result.metrics, "config": cfg.to_dict(), "dataset": val.meta.get("layout"),
                             "heads_trained_on": trained_on, "head_files": files, "primary": PRIMARY, "higher_is_better": True}
    if opts.plot:
        from .report import plot_samples

        pic = plot_samples("interactive", result.samples, out / "interactive_predictions.png")
        found["pictures"] = [str(pic)] if pic else []
    return found, table, parity


__all__ = [
    "CONFIG", "PRIMARY", "ClickDecoder", "ClickEncoder", "ClickHead", "InteractiveConfig", "InteractiveResult", "PromptedRunner",
    "build_maps", "evaluate_interactive", "interactive_config", "load_click_head", "metrics_table", "normalized_focal_loss",
    "open_data", "patch_bias_model", "predict", "probe_config", "run", "save_click_head", "train_click_head", "trainable_features",
]
