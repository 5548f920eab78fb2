"""Official LoftUp against ours, side by side in one process: same weights, same inputs, interleaved.

    PYTHONPATH=. .venv/bin/python benchmarks/official_side_by_side.py --official /path/to/loftup-checkout

`--official` is a checkout of github.com/andrehuang/loftup (tested at 6620d9b); nothing of it is
copied into this project: its `upsamplers` package is imported from that path. Modules it imports
at the top but never uses on the forward path (torchvision, einops, huggingface_hub) are stood in
for by empty stubs when they are not installed (torchvision does not work with the CPU torch here).

Both models get the same weights: ours (`--checkpoint`: an official-layout file such as a hub
`pytorch_model.bin`; default a seeded random init of the official architecture, C = 384 - the
package's shipped checkpoint uses the RoPE low-res PE, which the official code does not have)
has the official state-dict layout, so the official module loads it with strict=True. Inputs: a bundled photo at each output size and stand-in low-res features of it
(`loftup.export.parity.photo_features`); batch 1.

Per (size, precision): one warm-up call of each, then `--repeats` rounds, each timing the official
model and ours back to back (the order alternates per round). Reported: both medians, the ratio of
the medians (official / ours; > 1 means ours is faster) and the median of the per-round ratios,
which is what to quote on a loaded machine. Outputs are compared (max abs, mean / min per-pixel
cosine) at each precision, and each against the official fp32 output. The official code runs
bf16 under `torch.autocast` (what its users would do); ours runs the engine `loftup upsample` uses
(`TorchEngine`) at that precision, with default settings (memory budget, native bf16 on CPU).

Writes `benchmarks/results/<cpu>/official_side_by_side.{json,md}` (or `--out DIR`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from loftup.bench.results import markdown_table, results_folder, run_environment, write_results

STUBBED = ("torchvision", "torchvision.transforms", "einops", "huggingface_hub")


def _stub_missing_modules() -> list[str]:
    """Empty stand-ins for the official code's unused top-level imports that fail to import here."""
    made = []
    for name in STUBBED:
        try:
            importlib.import_module(name)
            continue
        except Exception:  # missing, or installed but broken (torchvision without its CUDA libraries)
            sys.modules.pop(name, None)
        module = types.ModuleType(name)
        if name == "torchvision":
            module.transforms = None  # filled below
        if name == "torchvision.transforms":
            module.Normalize = lambda mean, std: None  # layers.py builds one at import; never called
        if name == "einops":
            module.rearrange = None
        if name == "huggingface_hub":
            class PyTorchModelHubMixin:  # the official LoftUp subclasses it with keyword arguments
                def __init_subclass__(cls, **kwargs):
                    super().__init_subclass__()

            module.PyTorchModelHubMixin = PyTorchModelHubMixin
            module.hf_hub_download = None
        sys.modules[name] = module
        made.append(name)
    if "torchvision" in made:
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    return made


def import_official(path: Path):
    """(upsamplers.upsamplers, upsamplers.layers) of the official checkout at `path`."""
    path = Path(path).expanduser().resolve()
    if not (path / "upsamplers" / "upsamplers.py").is_file():
        raise SystemExit(f"error: {path} is not a checkout of the official LoftUp code (no upsamplers/upsamplers.py)")
    stubs = _stub_missing_modules()
    sys.path.insert(0, str(path))
    try:
        ups = importlib.import_module("upsamplers.upsamplers")
        layers = importlib.import_module("upsamplers.layers")
    finally:
        sys.path.remove(str(path))
    return ups, layers, stubs


def official_model(ups, layers, ours) -> torch.nn.Module:
    """The hub wrapper exactly as the official hubconf builds it, loaded with our weights (strict)."""
    C = ours.cfg.feat_dim
    model = ups.UpsamplerwithChannelNorm(ups.LoftUp(C, lr_pe_type="sine", lr_size=ours.cfg.lr_pe_size), layers.ChannelNorm(C))
    model.load_state_dict(ours.state_dict(), strict=True)
    return model.eval()


def official_call(model, precision: str):
    def run(lr, image):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return model(lr, image).float()

    return run


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def side_by_side(official_fn, ours_fn, inputs, repeats: int) -> dict:
    """Interleaved timing of two callables on the same inputs; their last outputs."""
    _, off_out = timed(official_fn, *inputs)  # warm-up (allocator, thread pools, oneDNN primitives)
    _, our_out = timed(ours_fn, *inputs)
    off_t, our_t = [], []
    for r in range(repeats):
        pair = [(official_fn, off_t), (ours_fn, our_t)]
        for fn, times in (pair if r % 2 == 0 else pair[::-1]):
            dt, out = timed(fn, *inputs)
            times.append(dt)
    ratios = [a / b for a, b in zip(off_t, our_t)]
    return {"official_s": off_t, "ours_s": our_t, "official_median_s": statistics.median(off_t),
            "ours_median_s": statistics.median(our_t),
            "ratio_of_medians": statistics.median(off_t) / statistics.median(our_t),
            "median_pair_ratio": statistics.median(ratios), "outputs": (off_out, our_out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="a checkout of github.com/andrehuang/loftup")
    ap.add_argument("--checkpoint", type=Path, default=None, help="an official-layout checkpoint (default: seeded random init, C = 384)")
    ap.add_argument("--sizes", default="224,448")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<cpu>)")
    ap.add_argument("--name", default="official_side_by_side")
    args = ap.parse_args(argv)

    from loftup.export.engine import TorchEngine
    from loftup.export.parity import compare, photo_batch, photo_features
    from loftup.model import load_or_init

    torch.set_num_threads(args.threads)
    ups, layers, stubs = import_official(args.official)
    ours_model = load_or_init(args.checkpoint, random_init=args.checkpoint is None, feat_dim=384, seed=0).eval()
    official = official_model(ups, layers, ours_model)
    env = run_environment()
    sizes = [int(s) for s in args.sizes.split(",")]
    precisions = args.precisions.split(",")
    rows, reference = [], {}
    for size in sizes:
        image, photos = photo_batch(1, size, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        lr = photo_features(image, ours_model.cfg.feat_dim, 14)
        for prec in precisions:
            engine = TorchEngine(ours_model, precision=prec)
            print(f"{size}px {prec}: timing official and ours, {args.repeats} interleaved rounds ...", flush=True)
            res = side_by_side(official_call(official, prec), engine, (lr, image), args.repeats)
            off_out, our_out = res.pop("outputs")
            if prec == "fp32":
                reference[size] = off_out
            row = {"size": size, "precision": prec, "lr_size": lr.shape[-1], "photo": photos[0], **res,
                   "ours_vs_official": compare(our_out, off_out), "engine": engine.describe()}
            if size in reference:
                row["official_vs_official_fp32"] = compare(off_out, reference[size])
                row["ours_vs_official_fp32"] = compare(our_out, reference[size])
            rows.append(row)
            print(f"  official {res['official_median_s']:.2f} s, ours {res['ours_median_s']:.2f} s, "
                  f"ratio {res['median_pair_ratio']:.2f}x; ours vs official min cos {row['ours_vs_official']['min_cos']:.5f}",
                  flush=True)
            del engine
    data = {"benchmark": "official_side_by_side", "environment": env, "official": str(args.official.resolve()),
            "official_commit": _commit(args.official), "stubbed_modules": stubs,
            "weights": str(args.checkpoint) if args.checkpoint else "random init (seed 0), official architecture",
            "feat_dim": ours_model.cfg.feat_dim, "repeats": args.repeats, "threads": args.threads, "rows": rows}
    paths = write_results(results_folder(args.out), args.name, data, render(data))
    print("\n".join(str(p) for p in paths))
    return 0


def _commit(path: Path) -> str | None:
    head = Path(path) / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (Path(path) / ".git" / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return None


def render(data: dict) -> str:
    header = ["size", "precision", "official s", "ours s", "ratio (median of rounds)", "ratio of medians",
              "ours vs official: max abs / min cos", "vs official fp32: official / ours min cos"]
    rows = []
    for r in data["rows"]:
        o = r["ours_vs_official"]
        ref = r.get("official_vs_official_fp32"), r.get("ours_vs_official_fp32")
        rows.append([r["size"], r["precision"], f"{r['official_median_s']:.2f}", f"{r['ours_median_s']:.2f}",
                     f"**{r['median_pair_ratio']:.2f}x**", f"{r['ratio_of_medians']:.2f}x",
                     f"{o['max_abs']:.2e} / {o['min_cos']:.5f}",
                     f"{ref[0]['min_cos']:.5f} / {ref[1]['min_cos']:.5f}" if ref[0] else "-"])
    return (f"# Official LoftUp vs ours, side by side (C = {data['feat_dim']}, batch 1, {data['threads']} threads)\n\n"
            f"Same weights ({data['weights']}), same inputs, interleaved in one process, {data['repeats']} rounds; "
            "ratio = official time / our time (> 1: ours is faster). Official commit "
            f"`{(data['official_commit'] or '?')[:12]}`.\n\n" + markdown_table(header, rows))


if __name__ == "__main__":
    sys.exit(main())
