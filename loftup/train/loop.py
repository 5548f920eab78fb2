"""The training loop shared by both stages: data, optimiser, AMP, DDP, logs, checkpoints, resume.

    from loftup.train import Trainer, build_config
    cfg = build_config(1, "paper", data="photos/", out="runs/s1", backbone="dinov2_vits14", steps=1000)
    result = Trainer(cfg).fit()            # -> TrainResult (losses, final checkpoint, ...)

One optimisation step = one global batch (cfg.batch_size images, split over the ranks).
Checkpoints (our weight format + a weights_only-loadable state file) are written by rank 0
every `save_every` steps, when a `fit(max_steps=...)` call ends early, at the end, and when
the run is interrupted (Ctrl-C / SIGTERM stop the loop at the next step boundary, on all
ranks together). `Trainer(cfg, resume=True)` continues bit-exactly on the same hardware: the
data stream is a function of (seed, step), and the state file restores optimiser, scheduler,
EMA teacher and RNG.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..runtime.devices import autocast, emulated_bf16_warning
from ..runtime.interrupts import Interrupted
from ..errors import CheckpointError, ConfigError, TrainingError
from .data import MaskedImageDataset, SampleSpec, StepSampler, collate, discover, unwrap_worker_errors
from ..io import check_writable_dir
from .ddp import DistContext, all_reduce_scalar, barrier, cleanup, convert_batchnorm, init_distributed
from .features import FeatureExtractor, backbone_identity
from .logs import CsvLog, ProgressBar, RunDir, TensorBoardLog, load_state, save_state
from .presets import RUN_CONTROL, TrainConfig, comparable, load_run_config, save_run_config
LOG_FIELDS = ["step", "epoch", "loss", "distill", "masks", "lr", "grad_norm", "images_per_s", "skipped", "elapsed_s"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    losses: list[float] = field(default_factory=list)  # per step run by this fit() call (rank-0 local)
    checkpoint: Path | None = None
    skipped: int = 0
    images_per_s: float = 0.0
    interrupted: bool = False

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def init_fresh(model, cfg: TrainConfig) -> None:
    """The config's starts for a freshly built LoftUp (`positional_init`, `low_frequency_init`);
    `loftup train` and scripts/train_default.py both call it."""
    if cfg.positional_init:
        model.upsampler.ca_transformer.init_positional(cfg.positional_init)
    if cfg.low_frequency_init:
        model.upsampler.init_low_frequency(cfg.low_frequency_init)


def lr_factor(cfg: TrainConfig, total_steps: int, i: int) -> float:
    """The learning-rate multiplier at step index i: linear warm-up over cfg.warmup_steps, then
    cfg.schedule (constant, cosine or linear) down to cfg.min_lr_ratio at total_steps."""
    if cfg.warmup_steps and i < cfg.warmup_steps:
        return (i + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (i - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def resume_config(out: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The saved config of run `out`, with run-control overrides (steps, workers, ...) applied.

    The run continues in `out` - the folder given now, never the `out:` saved in config.yaml (a
    copied run folder resumes in the copy). Overriding anything that changes what is trained
    raises ConfigError.
    """
    run = RunDir(out)
    if not run.config.is_file():
        raise CheckpointError(f"nothing to resume in {run.root}: no config.yaml; start the run without --resume")
    saved = load_run_config(run.root)
    changes = {k: v for k, v in (overrides or {}).items() if v is not None and k != "out"}
    base = comparable(saved)
    probe = comparable(saved.replace(**changes))
    bad = [k for k in changes if k not in RUN_CONTROL and probe[k] != base[k]]
    if bad:
        k = bad[0]
        raise ConfigError(f"cannot change {k} when resuming (the run uses {base[k]!r}); start a new --out to change it")
    allowed = {k: v for k, v in changes.items() if k in RUN_CONTROL}
    if "steps" in allowed and "epochs" not in allowed:
        allowed["epochs"] = saved.epochs
    return saved.replace(**allowed)


def _leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and Ctrl-C: a stop sent to the whole process group (systemd's
    default, `pkill -f`, a terminal) then reaches the main process alone, which ends the step, saves
    its checkpoint and shuts the workers down; a killed worker would fail the run without one."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Trainer:
    """Builds everything a run needs from a TrainConfig and trains with `fit()`.

    backbone: a ready frozen module to use instead of `create_backbone(cfg.backbone)` - it must
        map normalised images (B, 3, H, W) to (B, C, H/p, W/p) and have `embed_dim` and
        `patch_size` (and optionally `mean`, `std`, `name`, `weights_source`) attributes.
        Tests use this for tiny backbones.
    resume: continue the run in cfg.out from its latest checkpoint (cfg must match the run's).
    callbacks: called as fn(trainer, step, metrics) after every optimiser step, on every rank.
    """

    def __init__(self, cfg: TrainConfig, backbone: nn.Module | None = None, resume: bool = False,
                 callbacks: Sequence[Callable[["Trainer", int, dict], None]] = ()):
        cfg.validate()
        if not cfg.out:
            raise ConfigError("no run folder given; pass --out RUN_DIR")
        check_writable_dir(cfg.out, "--out")  # before anything is built or written
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.run = RunDir(cfg.out)
        self._root_existed = self.run.root.exists()  # a run that fails before its first step removes only what it made
        self._signum = 0  # the signal that asked the loop to stop
        self.ctx: DistContext = init_distributed(cfg.device)
        self.device = self.ctx.device
        self._stop = threading.Event()
        self.skipped = 0
        self.elapsed_before = 0.0  # training seconds of earlier processes of this run (from a resumed state)
        self._t_start: float | None = None
        try:
            self._setup(backbone, resume)
        except BaseException:
            cleanup(self.ctx)
            raise

    # -- construction ---------------------------------------------------------------------
    def _setup(self, backbone: nn.Module | None, resume: bool) -> None:
        cfg, ctx = self.cfg, self.ctx
        latest = self._check_run_folder(resume)
        index = self._read_data()
        self._read_dims(backbone)  # channels first (cheap), so a mismatched --init fails before a backbone is built
        torch.manual_seed(cfg.seed)
        self.core = self._build_model(resume, latest)
        self._attach_backbone(backbone)
        self.objective = self._build_objective()
        self.model: nn.Module = self._wrap_ddp()
        self.params = [p for p in self.core.parameters() if p.requires_grad]
        if hasattr(self.objective, "parameters"):  # e.g. FeatUp's downsampler and ScaleNet, trained alongside
            self.params += list(self.objective.parameters())
        self.optimizer = self._build_optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if (cfg.precision == "fp16" and self.device.type == "cuda") else None
        self._build_schedule(index)
        self.step = 0
        if resume:
            self._load_state(latest)
        elif ctx.is_main:
            self.run.root.mkdir(parents=True, exist_ok=True)
            save_run_config(cfg, self.run.root)
        barrier(ctx)

    def _check_run_folder(self, resume: bool) -> int | None:
        """The step to resume from (None for a new run); errors for a folder that does not fit --resume."""
        cfg, ctx = self.cfg, self.ctx
        latest = self.run.resume_step(self._warn if ctx.is_main else lambda msg: None) if resume else self.run.latest_step()
        if resume and latest is None:
            raise CheckpointError(f"nothing to resume in {self.run.root}: no checkpoint found; start without --resume")
        if not resume and latest is not None:
            raise ConfigError(f"{self.run.root} already holds a run (step {latest}); pass --resume to continue it or choose another --out")
        if resume:
            self._check_same_run()
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("fp16 autocast needs a CUDA GPU; use --precision bf16 (or fp32) on CPU")
        slow = emulated_bf16_warning(self.device, cfg.precision)
        if slow and ctx.is_main:
            self._warn(slow)
        return latest

    def _read_data(self):
        """The training data's index (records + warnings, the first 20 printed by the main rank)."""
        index = discover(self.cfg.data, self.cfg.masks, self.cfg.coco_json)
        self.data_description = index.description
        if self.ctx.is_main:
            for w in index.warnings[:20]:
                self._warn(w)
            if len(index.warnings) > 20:
                self._warn(f"... and {len(index.warnings) - 20} more data warnings")
        return index

    def _read_dims(self, backbone: nn.Module | None) -> None:
        """feat_dim and patch_size from a given backbone, else from the registry row (nothing built)."""
        if backbone is not None:
            feat_dim = getattr(backbone, "embed_dim", None)
            if feat_dim is None:
                raise ConfigError("a custom backbone needs an `embed_dim` attribute (its feature channels)")
            patch_size = getattr(backbone, "patch_size", 1)
        else:
            from ..backbones import get_spec

            spec = get_spec(self.cfg.backbone)
            feat_dim, patch_size = spec.embed_dim, spec.patch_size
        self.feat_dim = int(feat_dim)
        self.patch_size = int(patch_size)

    def _attach_backbone(self, backbone: nn.Module | None) -> None:
        """The frozen backbone on the device (built from the config when none is given), its sizes checked."""
        cfg = self.cfg
        if backbone is None:
            from ..backbones import create_backbone

            backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights, device=self.device)
        self.backbone = backbone.to(self.device).eval().requires_grad_(False)
        patch = int(getattr(backbone, "patch_size", 1))
        for s in cfg.sizes + ([cfg.teacher_size] if cfg.stage == 2 and cfg.teacher_size else []):
            if s % patch:
                raise ConfigError(f"training size {s} is not a multiple of the backbone's patch size {patch}; use {max(patch, s // patch * patch)}")
        self.backbone_id = backbone_identity(backbone)
        self.features = FeatureExtractor(backbone, cfg.cache_dir, cfg.precision)

    def _build_objective(self):
        """Stage 1 / stage 2 for LoftUp; LiFT and FeatUp-JBU bring their own objectives."""
        cfg = self.cfg
        if cfg.upsampler != "loftup":
            from .baselines import objective_for

            return objective_for(cfg, self)
        if cfg.stage == 1:
            from .stage1 import Stage1Objective

            return Stage1Objective(cfg, self.feat_dim, self.device)
        from .stage2 import Stage2Objective

        return Stage2Objective(cfg, self.core)

    def _wrap_ddp(self) -> nn.Module:
        """The module the steps call: the model itself, or its DDP wrapper (BatchNorm synchronised)."""
        if not self.ctx.distributed:
            return self.core
        if getattr(self.core.cfg, "minmax", None) == "batch":
            self._warn("minmax 'batch' scales images over each rank's local batch under DDP; use per_image")
        convert_batchnorm(getattr(self.core, "upsampler", self.core), self.device)
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(self.core, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_schedule(self, index) -> None:
        """The dataset, the steps (per epoch and in all) and the learning-rate schedule."""
        cfg, ctx = self.cfg, self.ctx
        spec = SampleSpec.from_config(cfg, self.backbone)
        self.dataset = MaskedImageDataset(index.records, spec)
        probe = StepSampler(len(self.dataset), cfg.batch_size, cfg.sizes, cfg.seed, ctx.rank, ctx.world)
        self.steps_per_epoch = probe.steps_per_epoch
        self.total_steps = int(cfg.steps) if cfg.steps > 0 else max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    def _check_same_run(self) -> None:
        if not self.run.config.is_file():
            return
        saved = comparable(load_run_config(self.run.root))
        now = comparable(self.cfg)
        bad = [k for k in now if k not in RUN_CONTROL and k != "out" and now[k] != saved.get(k)]
        if bad:
            raise ConfigError(f"cannot resume with a different {bad[0]} (run: {saved.get(bad[0])!r}, now: {now[bad[0]]!r})")

    def _build_model(self, resume: bool, latest: int | None):
        from ..model import LoftUp, LoftUpConfig, build_upsampler, load_checkpoint

        cfg = self.cfg
        kind = cfg.upsampler
        if resume:
            model = load_checkpoint(self.run.weights(latest), feat_dim=self.feat_dim, kind=kind)
        elif cfg.init:
            model = load_checkpoint(cfg.init, feat_dim=self.feat_dim, kind=kind,
                                    **{k: v for k, v in cfg.model.items() if k in ("attn_backend", "attn_budget_mb", "conv_backend")})
        elif kind != "loftup":
            extra = {"patch_size": self.patch_size} if kind == "lift" else {}
            model = build_upsampler(kind, self.feat_dim, backbone=cfg.backbone, **{**extra, **cfg.model})
        else:
            if cfg.stage == 2:
                raise ConfigError("stage 2 starts from stage-1 weights: pass --init CKPT (a stage-1 run's model.safetensors)")
            model = LoftUp(LoftUpConfig(**{"feat_dim": self.feat_dim, "backbone": cfg.backbone, **cfg.model}))
            init_fresh(model, cfg)
        model = model.to(self.device).train()
        if kind == "loftup":
            model.channelnorm.requires_grad_(bool(cfg.train_channelnorm))
        elif hasattr(model, "channelnorm"):  # FeatUp's ChannelNorm (use_norm) is not optimised
            model.channelnorm.requires_grad_(False)
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        if cfg.optimizer == "nadam":
            return torch.optim.NAdam(self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        return torch.optim.SGD(self.params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)

    def _lr_factor(self, i: int) -> float:
        return lr_factor(self.cfg, self.total_steps, i)

    # -- helpers used by the objectives ---------------------------------------------------
    def autocast(self):
        return autocast(self.device, self.cfg.precision)

    def request_stop(self) -> None:
        """Stop at the next step boundary and save (what Ctrl-C does)."""
        self._stop.set()

    def _warn(self, msg: str) -> None:
        prefix = f"[rank {self.ctx.rank}] " if self.ctx.distributed else ""
        print(f"{prefix}warning: {msg}", file=sys.stderr, flush=True)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        nb = self.device.type == "cuda"
        return {k: (v.to(self.device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    # -- checkpoints ----------------------------------------------------------------------
    def _meta(self, role: str) -> dict[str, Any]:
        return {"role": role, "upsampler": self.cfg.upsampler, "stage": self.cfg.stage, "step": self.step, "preset": self.cfg.preset,
                "backbone": self.cfg.backbone, "backbone_id": self.backbone_id, "run": self.run.root.resolve().name}

    def save(self) -> Path | None:
        """Write the checkpoint of the current step (rank 0); returns the weights path."""
        if not self.ctx.is_main:
            return None
        from ..model import save_checkpoint

        weights = save_checkpoint(self.core, self.run.weights(self.step), self._meta("student"))
        state = {
            "step": self.step, "stage": self.cfg.stage, "total_steps": self.total_steps,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "objective": self.objective.state_dict(), "skipped": self.skipped, "elapsed_s": self.elapsed(),
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        save_state(self.run.state(self.step), state)
        self.run.mark_latest(self.step)
        self.run.prune(self.cfg.keep_last)
        return weights

    def elapsed(self) -> float:
        """Training seconds of the whole run: earlier processes (resumed) plus this one's loop."""
        return self.elapsed_before + (time.perf_counter() - self._t_start if self._t_start is not None else 0.0)

    def _load_state(self, step: int) -> None:
        state = load_state(self.run.state(step))
        if int(state["stage"]) != self.cfg.stage:
            raise CheckpointError(f"{self.run.root} is a stage-{state['stage']} run; resume it with --stage {state['stage']}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state["objective"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.skipped = int(state.get("skipped", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.step = int(state["step"])

    def _save_final(self) -> Path | None:
        if not self.ctx.is_main:
            return None
        from ..model import save_checkpoint

        path = save_checkpoint(self.core, self.run.root / "model.safetensors", self._meta("student"))
        if hasattr(self.objective, "teacher"):
            save_checkpoint(self.objective.teacher.module, self.run.root / "teacher.safetensors", self._meta("ema-teacher"))
        return path

    # -- the loop -------------------------------------------------------------------------
    def _loader(self, end: int):
        from torch.utils.data import DataLoader

        cfg = self.cfg
        sampler = StepSampler(len(self.dataset), cfg.batch_size, cfg.sizes, cfg.seed, self.ctx.rank, self.ctx.world, self.step, end)
        # its own generator: a DataLoader otherwise draws its base seed from torch's global RNG, which would
        # shift every later draw of an objective that uses that RNG (FeatUp's jitters, dropout) on resume
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed + self.step),
                          worker_init_fn=_leave_stop_signals_to_the_main_process)

    @contextlib.contextmanager
    def _signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {}

        def handler(signum, frame):
            if self._stop.is_set():  # second Ctrl-C: stop right now
                raise Interrupted(signum, self._kept_line("aborted without saving this step"))
            self._signum = signum
            self._stop.set()
            if self.ctx.is_main:
                print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort without saving)",
                      file=sys.stderr, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One optimisation step on a batch already on the device; returns its metrics."""
        cfg = self.cfg
        loss, extra = self.objective.loss(self, batch)
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss is {float(loss)} at step {self.step + 1}; lower --lr or use --precision fp32")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if hasattr(self.objective, "after_backward"):
            self.objective.after_backward(self)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        if hasattr(self.objective, "grad_clip"):  # an objective's own schedule (FeatUp: 1e-4 for 10 steps)
            clip = self.objective.grad_clip(self.step, clip)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.objective.after_step(self, self.step)
        return {"step": self.step, "loss": float(loss.detach()), "grad_norm": grad_norm,
                "lr": self.optimizer.param_groups[0]["lr"], **extra}

    def fit(self, max_steps: int | None = None) -> TrainResult:
        """Train until total_steps (or at most max_steps more steps), checkpointing on the way.

        A data error raised in a loader worker arrives as its own one-line error; a run that fails
        before its first step removes the run folder (or the files) it created.
        """
        with self._discard_if_no_step(), unwrap_worker_errors():
            return self._fit(max_steps)

    def _fit(self, max_steps: int | None) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        end = self.total_steps if max_steps is None else min(self.total_steps, self.step + int(max_steps))
        result = TrainResult(self.run.root, self.step, self.total_steps, skipped=self.skipped)
        if self.step >= end:  # nothing left to do (e.g. resuming a finished run)
            final = self.run.root / "model.safetensors"
            result.checkpoint = final if final.is_file() else self.run.weights(self.step)
            return result
        main = ctx.is_main
        csv_log = CsvLog(self.run.log, LOG_FIELDS, resume_step=self.step) if main else None
        tb = TensorBoardLog(self.run.tb) if main else None
        if main and cfg.progress and self.step == 0:
            print(f"{self._label()} ({cfg.preset}): {self.data_description}; {self.total_steps} steps of {cfg.batch_size} images"
                  + (f" on {ctx.world} ranks ({ctx.backend})" if ctx.distributed else "")
                  + ("" if tb.available else "; TensorBoard not installed, logging to CSV only"), file=sys.stderr)
        bar = ProgressBar(self.total_steps, self.step, main and cfg.progress, self._label())
        t_start = self._t_start = time.perf_counter()
        t_window, n_window, ips = t_start, 0, 0.0
        interrupted = False
        self.model.train()
        try:
            with self._signals():
                for batch in self._loader(end):
                    for s in batch["skipped"]:
                        self.skipped += 1
                        self._warn(f"skipped unreadable sample {s} ({self.skipped} skipped so far)")
                    metrics = self.train_step(self._to_device(batch))
                    loss_value = metrics["loss"]
                    result.losses.append(loss_value)
                    n_window += 1
                    now = time.perf_counter()
                    for cb in self.callbacks:
                        cb(self, self.step, metrics)

                    stop = all_reduce_scalar(ctx, float(self._stop.is_set()), "max") > 0
                    last = self.step == end or stop
                    if self.step % cfg.log_every == 0 or last:
                        ips = cfg.batch_size * n_window / max(now - t_window, 1e-9)
                        t_window, n_window = now, 0
                        row = {**metrics, "epoch": self.step / self.steps_per_epoch, "images_per_s": ips,
                               "loss": all_reduce_scalar(ctx, loss_value, "mean"),
                               "skipped": int(all_reduce_scalar(ctx, self.skipped, "sum")), "elapsed_s": self.elapsed_before + now - t_start}
                        if main:
                            csv_log.write(row)
                            tb.write(self.step, row)
                    bar.update(self.step, loss_value, ips)
                    if self.step % cfg.save_every == 0 and not last:
                        self.save()
                    if stop:
                        interrupted = True
                        break
        finally:
            bar.close()
            if tb is not None:
                tb.close()
        result.checkpoint = self.save() if main else None
        if self.step >= self.total_steps:
            result.checkpoint = self._save_final() or result.checkpoint
        result.step, result.skipped, result.interrupted = self.step, self.skipped, interrupted
        result.images_per_s = cfg.batch_size * len(result.losses) / max(time.perf_counter() - t_start, 1e-9)
        if main:
            self._write_summary(result)
        barrier(ctx)
        if interrupted:
            raise Interrupted(self._signum or signal.SIGINT, self._kept_line(f"checkpoint saved in {self.run.ckpt_dir}"))
        return result

    def _kept_line(self, what: str) -> str:
        """What an interrupted run kept and how to go on (the CLI's one line)."""
        if self.run.latest_step() is None:
            return f"{what}; no checkpoint yet, start again without --resume"
        return f"stopped at step {self.step}/{self.total_steps}, {what}; continue with `loftup train --resume --out {self.run.root}`"

    @contextlib.contextmanager
    def _discard_if_no_step(self):
        """A run that fails before its first step leaves no run folder it created (only rank 0 writes one)."""
        try:
            yield
        except BaseException:
            if self.ctx.is_main and self.step == 0 and self.run.latest_step() is None:
                self._discard_run()
            raise

    def _discard_run(self) -> None:
        import shutil

        if not self._root_existed:
            shutil.rmtree(self.run.root, ignore_errors=True)
            return
        for path in (self.run.config, self.run.log, self.run.summary):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.run.tb, ignore_errors=True)

    def _label(self) -> str:
        """'stage 1' / 'stage 2' for LoftUp, the kind's name for the others (one stage)."""
        return f"stage {self.cfg.stage}" if self.cfg.upsampler == "loftup" else self.cfg.upsampler

    def _write_summary(self, result: TrainResult) -> None:
        from ..io import atomic_write

        old = {}
        if self.run.summary.is_file():
            try:
                old = json.loads(self.run.summary.read_text())
            except ValueError:
                old = {}
        first = old.get("first_loss", result.losses[0] if result.losses else None)
        summary = {
            "stage": self.cfg.stage, "preset": self.cfg.preset, "step": result.step, "total_steps": result.total_steps,
            "finished": result.finished, "first_loss": first, "last_loss": result.losses[-1] if result.losses else old.get("last_loss"),
            "images_per_s_last_call": result.images_per_s, "skipped": result.skipped, "world_size": self.ctx.world,
            "backbone": self.backbone_id, "data": self.data_description,
            "checkpoint": _relative(result.checkpoint, self.run.root) if result.checkpoint else None,
        }
        atomic_write(self.run.summary, lambda p: p.write_text(json.dumps(summary, indent=2)))

    def close(self) -> None:
        cleanup(self.ctx)


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the run folder `root` when inside it (what files in a run folder store)."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def train(cfg: TrainConfig, backbone: nn.Module | None = None, resume: bool = False, max_steps: int | None = None) -> TrainResult:
    """Build a Trainer, fit, and release the process group."""
    trainer = Trainer(cfg, backbone=backbone, resume=resume)
    try:
        return trainer.fit(max_steps)
    finally:
        trainer.close()
