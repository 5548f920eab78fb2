"""Zero-shot open-vocabulary segmentation with ProxyCLIP (`loftup eval --probe ovseg`).

ProxyCLIP (Lan et al., "ProxyCLIP: Proxy Attention Improves CLIP for Open-Vocabulary
Segmentation", ECCV 2024; facts from the paper and its repository mc-lan/ProxyCLIP) replaces the
attention of CLIP's last visual block by *proxy attention* computed from a vision foundation
model's features; the upsampler under test upsamples those proxy features first. As the LoftUp
supplement (appendix A.2) runs it: CLIP ViT-B/16 (`--clip`), DINOv2-S/14 as the proxy backbone
(`--backbone`, the default), 336 px windows, proxy features upsampled 8x by the upsampler under
test (`proxy_scale`), mIoU on COCO-Object, Cityscapes and ADE20K (loftup.eval.ovseg_data).

Per window (ProxyCLIP's `forward_feature` and its `custom_attn`):
1. CLIP runs every visual block but the last (`CLIPVisionTower.trunk`); of the last block only
   the value projection of ln_1(tokens) is kept, without the class token: a (width, h, w) grid,
   resized bilinearly to the proxy features' size H x W.
2. Proxy attention from the proxy features F (C, H, W): q = F / |F| per pixel (over channels),
   S = q^T q (cosine similarities, HW x HW), A = softmax((S - beta * mean(S)) * gamma) over
   keys, with entries whose shifted value is negative set to -inf first. Defaults beta = 1.2,
   gamma = 3.0 (ProxyCLIPSegmentation's defaults, used by all its configs). mean(S) is the mean
   over all HW x HW entries: it equals |sum_n q_n|^2 / (HW)^2, so it is computed without S.
   One addition: a pixel's own entry is never masked - it is masked only when its whole row is
   (S <= 1 = S_nn), where ProxyCLIP's softmax would give NaN; elsewhere the two agree exactly.
3. out_proj of A V (the value grid as HW tokens; no residual, no MLP), ln_post, proj, L2
   normalisation; logits = cosine similarity with the class-name text embeddings.
4. Text embeddings: every class name (and synonym) in the 80 OpenAI ImageNet prompt templates
   (`TEMPLATES`, the list ProxyCLIP uses, `openai_imagenet_template`), each embedding
   L2-normalised, averaged over templates, normalised again.

Memory: S is never materialised. Query rows are processed in chunks sized so that one chunk's
similarities, mask and softmax stay under `chunk_mb` (default 256 MiB); at 336 px with 8x
upsampling (HW = 192^2 = 36,864) the full matrix would be 5.4 GB in float32 per image.

Whole images (ProxyCLIP's `forward_slide`): the image is resized so its shorter side is `size`
(336; ProxyCLIP's configs use 336 for COCO-Object and 448 for Cityscapes / ADE20K, settable with
--size), cut into `slide_crop` x `slide_crop` windows (336) with stride `slide_stride` (112;
windows at the border are moved inside the image), the windows' logits (resized bilinearly to the
window) averaged where they overlap, resized bilinearly to the label map's original size, scaled
by `logit_scale` (40) and soft-maxed over the queries; a class scores the maximum of its
synonyms; the argmax is the prediction, and pixels whose best probability is below `prob_thd`
become class 0 (the background). prob_thd defaults to 0.25 on COCO-Object (ProxyCLIP's
cfg_coco_object.py, whose first class is the background words) and 0 elsewhere.
`slide_crop=0` runs each image whole.

Proxy features: each window is the pipeline's input (loftup.pipeline). The proxy backbone sees
it at `slide_crop` px (24 x 24 patches for DINOv2-S/14 at 336), and every source answers at
proxy_scale x that grid (192 x 192): `source.features(window, out_size)`. By the pipeline's one
rule the backbone input is the guidance image (the window at 192 px) resized to 336, slightly
softer than the window itself, which the official run fed to DINOv2 directly; it is the same
for every upsampler, engine and reference. The low-res baseline gives the 24 x 24 grid itself
(plain ProxyCLIP with DINOv2-S/14).

Engine parity: ovseg trains nothing, so the reference and the engine are scored alike; the
report holds both metric sets, their difference and the proxy features' parity per window.
Image resizing: bicubic (the eval package's image resize; mmseg's Resize is bilinear).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, InputError

TEMPLATES = (
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
    'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
    'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.',
    'a painting of a {}.', 'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.', 'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.', 'a photo of the {}.', 'a good photo of the {}.', 'a rendering of the {}.',
    'a {} in a video game.', 'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.',
    'a photo of a {}.', 'the origami {}.', 'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.',
    'a origami {}.', 'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.',
    'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.',
    'a embroidered {}.', 'a pixelated photo of a {}.', 'itap of the {}.', 'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.', 'a photo of the small {}.',
    'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.', 'a dark photo of a {}.',
    'itap of a {}.', 'graffiti of the {}.', 'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.',
)


@dataclass
class OvsegConfig:
    """ProxyCLIP protocol settings (module doc); `--set KEY=VALUE` changes any of them."""

    task: str = "ovseg"
    size: int | None = 336  # shorter image side; None keeps the image's size
    slide_crop: int = 336  # window side; 0 = whole images
    slide_stride: int = 112
    proxy_input: int | None = None  # proxy backbone input side (None: the window's side, i.e. slide_crop or size)
    proxy_scale: int = 8  # proxy features at this multiple of the proxy backbone's grid
    beta: float = 1.2
    gamma: float = 3.0
    logit_scale: float = 40.0
    prob_thd: float | None = None  # None: 0.25 on COCO-Object (background), else 0
    chunk_mb: int = 256  # memory bound of one proxy-attention chunk
    text_batch: int = 256  # prompts per text-tower call
    max_eval: int | None = None
    plot_samples: int = 4
    seed: int = 0
    device: str = "cpu"

    @property
    def input_size(self) -> int | None:
        """What the backbone runner is built with (loftup.pipeline's input_size rule)."""
        return self.proxy_input or self.slide_crop or self.size

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_size": self.input_size}


CONFIG = OvsegConfig


def check_config(cfg: OvsegConfig) -> None:
    for key in ("slide_stride", "proxy_scale", "chunk_mb", "text_batch"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be a positive integer, got {getattr(cfg, key)}")
    if cfg.slide_crop < 0:
        raise ConfigError(f"slide_crop must be 0 (whole images) or a window side in pixels, got {cfg.slide_crop}")
    if cfg.gamma <= 0:
        raise ConfigError(f"gamma must be positive, got {cfg.gamma}")


# ----------------------------------------------------------------------------------------
# proxy attention


def proxy_attention(proxy: torch.Tensor, values: torch.Tensor, beta: float = 1.2, gamma: float = 3.0,
                    chunk_mb: float = 256) -> torch.Tensor:
    """ProxyCLIP's attention (module doc, step 2) without the HW x HW matrix.

    proxy (B, C, H, W) features; values (B, H*W, D). Returns (B, H*W, D) = A @ values, computed
    in chunks of query rows whose similarities, mask and softmax fit in `chunk_mb` MiB.
    """
    B, _, H, W = proxy.shape
    N = H * W
    if values.shape[:2] != (B, N):
        raise InputError(f"values {tuple(values.shape)} do not match proxy features of {H}x{W} (batch {B})")
    q = F.normalize(proxy.float().flatten(2), dim=1).transpose(1, 2).contiguous()  # (B, N, C)
    values = values.float()
    mean = q.sum(1).pow(2).sum(-1) / (N * N)  # mean of q q^T over all entries, (B,)
    shift = (beta * mean).view(B, 1, 1)
    rows = max(1, int(chunk_mb * 2**20 // (9 * B * N)))  # float sims + float softmax + bool mask
    out = values.new_empty(B, N, values.shape[-1])
    for start in range(0, N, rows):
        stop = min(N, start + rows)
        s = torch.bmm(q[:, start:stop], q.transpose(1, 2))  # (B, c, N)
        s.sub_(shift).mul_(gamma)
        masked = s < 0
        own = torch.arange(stop - start, device=s.device)
        masked[:, own, own + start] = False  # never a whole row (module doc)
        s.masked_fill_(masked, float("-inf"))
        out[:, start:stop] = torch.bmm(torch.softmax(s, dim=-1), values)
    return out


# ----------------------------------------------------------------------------------------
# ProxyCLIP on one window


class ProxyCLIP:
    """A CLIP model (loftup.backbones.clip_text.CLIPModel) and the text embeddings of a class list.

    class_names: one tuple of synonyms per class (label order). Each synonym is one query.
    """

    def __init__(self, clip, class_names: Sequence[Sequence[str]], cfg: OvsegConfig):
        from ..backbones.clip_tokenizer import default_tokenizer

        self.clip, self.cfg = clip, cfg
        self.device = torch.device(cfg.device)
        self.queries = [str(w) for names in class_names for w in names]
        self.query_class = torch.tensor([k for k, names in enumerate(class_names) for _ in names], dtype=torch.long)
        self.num_classes = len(class_names)
        if not self.queries or any(len(names) == 0 for names in class_names):
            raise InputError("every class needs at least one name; check the class-name list")
        tok = default_tokenizer(clip.text.cfg.context_length)
        self.text = self._embed_texts(tok)  # (Q, D), unit rows

    @torch.no_grad()
    def _embed_texts(self, tok) -> torch.Tensor:
        prompts = [t.format(q) for q in self.queries for t in TEMPLATES]
        embs = []
        for s in range(0, len(prompts), self.cfg.text_batch):
            tokens = tok(prompts[s : s + self.cfg.text_batch])
            tokens = tokens[:, : int((tokens > 0).sum(1).max())].to(self.device)  # causal: the padding changes nothing
            embs.append(F.normalize(self.clip.text(tokens).float(), dim=-1))
        per_query = torch.cat(embs).view(len(self.queries), len(TEMPLATES), -1).mean(1)
        return F.normalize(per_query, dim=-1)

    @torch.no_grad()
    def values(self, window: torch.Tensor) -> torch.Tensor:
        """(B, width, h, w): the last block's values of a CLIP-normalised window (step 1)."""
        from ..pipeline import backbone_input

        visual = self.clip.visual
        x = backbone_input(window, visual.patch_size)
        tokens = visual.trunk(x)
        last = visual.transformer.resblocks[-1]
        C = tokens.shape[-1]
        v = F.linear(last.ln_1(tokens), last.attn.in_proj_weight[2 * C :], last.attn.in_proj_bias[2 * C :])[:, 1:]
        p = visual.patch_size
        return v.transpose(1, 2).reshape(x.shape[0], C, x.shape[-2] // p, x.shape[-1] // p)

    @torch.no_grad()
    def logits(self, values: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        """Cosine logits (B, Q, H, W) at the proxy features' size (steps 1-3)."""
        visual = self.clip.visual
        B, _, H, W = proxy.shape
        v = F.interpolate(values, size=(H, W), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        a = proxy_attention(proxy, v, self.cfg.beta, self.cfg.gamma, self.cfg.chunk_mb)
        z = visual.ln_post(visual.transformer.resblocks[-1].attn.out_proj(a)) @ visual.proj
        z = F.normalize(z, dim=-1)
        return (z @ self.text.T).transpose(1, 2).reshape(B, -1, H, W)

    def classify(self, logits: torch.Tensor, prob_thd: float) -> torch.Tensor:
        """(Q, H, W) averaged cosine logits -> (H, W) class map (module doc, the last steps)."""
        prob = torch.softmax(logits * self.cfg.logit_scale, dim=0)
        if len(self.queries) != self.num_classes:
            per_class = prob.new_full((self.num_classes, *prob.shape[1:]), -1.0)
            idx = self.query_class.to(prob.device).view(-1, 1, 1).expand_as(prob)
            prob = per_class.scatter_reduce(0, idx, prob, reduce="amax")
        best, pred = prob.max(0)
        pred[best < prob_thd] = 0
        return pred


def windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of ProxyCLIP's sliding windows; crop 0 (or larger than the image): one window."""
    if crop <= 0:
        return [(0, height, 0, width)]
    out = []
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * stride + crop, height), min(j * stride + crop, width)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


def proxy_out_size(height: int, width: int, patch: int, input_size: int | None, scale: int) -> tuple[int, int]:
    """The size every source answers at: `scale` x the proxy backbone's grid for this window."""
    from ..pipeline import backbone_input_size

    h, w = backbone_input_size(height, width, patch, input_size)
    return h // patch * scale, w // patch * scale


# ----------------------------------------------------------------------------------------
# a dataset


def _normalise(image01: torch.Tensor, mean, std) -> torch.Tensor:
    return (image01 - torch.tensor(mean, device=image01.device).view(1, 3, 1, 1)) / torch.tensor(std, device=image01.device).view(1, 3, 1, 1)


def predict_image(pc: ProxyCLIP, sources: dict[str, Any], image01: torch.Tensor, label_hw: tuple[int, int], prob_thd: float,
                  pairs: Sequence[tuple[str, str]] = ()) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Class maps (at label_hw) of one image (1, 3, H, W) in [0, 1] for every source, and the
    proxy-feature parity of each pair per window."""
    from ..export.parity import compare
    from ..pipeline import CLIP_MEAN, CLIP_STD

    cfg = pc.cfg
    _, _, H, W = image01.shape
    first = next(iter(sources.values()))
    acc = {name: torch.zeros(len(pc.queries), H, W, device=image01.device) for name in sources}
    count = torch.zeros(1, H, W, device=image01.device)
    parity = []
    for y1, y2, x1, x2 in windows(H, W, cfg.slide_crop, cfg.slide_stride):
        crop = image01[..., y1:y2, x1:x2]
        values = pc.values(_normalise(crop, CLIP_MEAN, CLIP_STD))
        out_size = proxy_out_size(y2 - y1, x2 - x1, first.runner.patch_size, first.runner.input_size, cfg.proxy_scale)
        feats, inputs = {}, {}
        for name, src in sources.items():
            key = (tuple(src.mean), tuple(src.std))  # one tensor per normalisation: sources on one runner share its pass
            inputs.setdefault(key, _normalise(crop, src.mean, src.std))
            feats[name] = src.features(inputs[key], out_size).float()
            logits = pc.logits(values, feats[name])
            acc[name][:, y1:y2, x1:x2] += F.interpolate(logits, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
        count[:, y1:y2, x1:x2] += 1
        for a, b in pairs:
            parity.append({"window": (y1, y2, x1, x2), **compare(feats[a], feats[b])})
    preds = {}
    for name, total in acc.items():
        mean = (total / count)[None]
        if tuple(label_hw) != (H, W):
            mean = F.interpolate(mean, size=tuple(label_hw), mode="bilinear", align_corners=False)
        preds[name] = pc.classify(mean[0], prob_thd)
    return preds, parity


def evaluate_ovseg(pc: ProxyCLIP, sources: dict[str, Any], data, pairs: Sequence[tuple[str, str]] = (), progress: bool = False,
                   log: Callable[[str], None] | None = None):
    """mIoU of every source on `data` (an ovseg SampleList); an EvalResult (loftup.eval.probes)."""
    from . import metrics as M
    from .datasets import resize_sample
    from .probes import EvalResult, _progress

    cfg = pc.cfg
    data = data.subset(cfg.max_eval)
    device = torch.device(cfg.device)
    prob_thd = cfg.prob_thd if cfg.prob_thd is not None else (0.25 if data.meta.get("background") else 0.0)
    meters = {name: M.ConfusionMatrix(pc.num_classes) for name in sources}
    parity: dict[str, list[dict[str, Any]]] = {f"{a}~{b}": [] for a, b in pairs}
    samples, seconds = [], 0.0
    with _progress(progress) as bar:
        job = bar.add_task("ProxyCLIP open-vocabulary segmentation", total=len(data)) if bar else None
        for i in range(len(data)):
            sample = data[i]
            image = resize_sample({"image": sample["image"]}, cfg.size, crop=False)["image"]
            image01 = torch.from_numpy(np.array(image)).to(device).permute(2, 0, 1)[None].float() / 255
            start = time.perf_counter()
            preds, windows_parity = predict_image(pc, sources, image01, sample["label"].shape, prob_thd, pairs)
            seconds += time.perf_counter() - start
            for name, pred in preds.items():
                meters[name].update(pred.cpu(), sample["label"])
            for entry in windows_parity:
                for key in parity:  # one pair in practice (reference~engine)
                    parity[key].append({"batch": len(parity[key]), "image": sample["name"], "images": 1, **entry})
            if len(samples) < cfg.plot_samples:
                samples.append({"name": sample["name"], "image": sample["image"], "target": {"label": sample["label"]},
                                "pred": {n: p.cpu().numpy() for n, p in preds.items()}})
            if bar:
                bar.advance(job)
    metrics = {name: {**m.compute(), "images": len(data)} for name, m in meters.items()}
    if log:
        log(f"ovseg: {len(data)} images, {seconds:.2f} s for {len(sources)} upsampler(s) (CLIP + proxy attention, all windows)")
    result = EvalResult(metrics, parity, samples)
    result.seconds = seconds
    return result


# ----------------------------------------------------------------------------------------
# `loftup eval --probe ovseg` (the runner's probe-module interface, see eval/runner.py)


def load_clip_weights(spec: str | Path | None, device: str = "cpu"):
    """--clip: a checkpoint file, or "online" (OpenAI's ViT-B/16 download, cached by torch.hub)."""
    from ..backbones.clip_text import load_clip

    if spec is None:
        raise ConfigError("the ovseg probe needs CLIP weights with the text tower: pass --clip ViT-B-16.pt (OpenAI's file) "
                          "or --clip online")
    if str(spec) == "online":
        from ..backbones.registry import _download, get_spec

        row = get_spec("clip_vitb16")
        spec = _download(row, row.url)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CheckpointError(f"--clip {path} is not a file; pass OpenAI's ViT-B-16.pt (or a safetensors of it) or 'online'")
    return load_clip(path, device=device)


def probe_config(opts, device: str) -> OvsegConfig:
    unused = [flag for flag, value in (("--epochs", opts.epochs), ("--lr", opts.lr), ("--batch-size", opts.batch_size),
                                       ("--hidden-dim", opts.hidden_dim), ("--max-train", opts.max_train)) if value is not None]
    if unused:
        raise ConfigError(f"{', '.join(unused)} do not apply to --probe ovseg: ProxyCLIP trains nothing")
    return OvsegConfig(size=opts.size if opts.size is not None else 336, proxy_input=opts.input_size, max_eval=opts.max_eval,
                       seed=opts.seed, device=device)


def open_data(opts):
    """(validation split, CLIP model): both checked before the proxy backbone is loaded."""
    from .ovseg_data import open_ovseg

    data = open_ovseg(Path(opts.data), opts.layout, opts.class_names)
    return data, load_clip_weights(opts.clip)


def run(opts, plan, cfg: OvsegConfig, data, out: Path, atol: float, rtol: float, log) -> tuple[dict[str, Any], str, Any]:
    """Evaluate plan.sources with ProxyCLIP: (results to merge, table, ParityReport or None)."""
    from . import report
    from .parity import parity_report

    check_config(cfg)
    data, clip = data
    clip = clip.to(cfg.device)
    started = time.perf_counter()
    pc = ProxyCLIP(clip, data.meta["class_names"], cfg)
    text_seconds = time.perf_counter() - started
    log(f"ovseg: {data.meta['layout']} ({len(data)} images, {pc.num_classes} classes, {len(pc.queries)} queries x "
        f"{len(TEMPLATES)} templates); CLIP {clip.visual.cfg.width}-wide, text embeddings in {text_seconds:.1f} s")
    result = evaluate_ovseg(pc, plan.sources, data, plan.pairs, opts.progress, log)
    parity = parity_report("ovseg", result, "miou", atol=atol, rtol=rtol) if plan.handle is not None else None
    table = report.metrics_table("seg", result.metrics, parity.delta if parity else None)
    results: dict[str, Any] = {
        "metrics": result.metrics, "config": cfg.to_dict(), "primary": "miou", "higher_is_better": True,
        "dataset": {"layout": data.meta["layout"], "images": len(data.subset(cfg.max_eval)), "classes": pc.num_classes,
                    "class_names": [list(n) for n in data.meta["class_names"]]},
        "clip": {"weights": str(opts.clip), "width": clip.visual.cfg.width, "patch": clip.visual.cfg.patch_size},
        "seconds": {"text_embeddings": text_seconds, "images": result.seconds},
    }
    if opts.plot:
        pic = report.plot_samples("seg", result.samples, out / "ovseg_predictions.png", pc.num_classes)
        results["pictures"] = [str(pic)] if pic else []
    return results, table, parity


__all__ = ["CONFIG", "TEMPLATES", "OvsegConfig", "ProxyCLIP", "evaluate_ovseg", "load_clip_weights", "open_data",
           "predict_image", "probe_config", "proxy_attention", "proxy_out_size", "run", "windows"]
