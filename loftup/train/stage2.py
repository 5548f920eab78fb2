"""Stage 2: self-distillation from an EMA teacher on zoomed-in crops.

Student and teacher start from the same (stage-1) weights. Per image, the student sees the
S x S view; each of K teacher crops is the image zoomed by t in teacher_scale and cropped to
the teacher size (see loftup.train.data). The teacher's output on a crop is mask-refined with
the crop's masks (teacher_alpha), resized to the crop's s x s footprint in the student output
(area averaging) and compared with the student's features there, over the central
`center_fraction` of the footprint (crop borders are unreliable for both):

- affinity (default): MSE between the cosine Gram matrices of the L2-normalised student and
  teacher features, computed without materialising the P x P Grams when P > C, via
  ||A^T A - B^T B||_F^2 = ||A A^T||_F^2 + ||B B^T||_F^2 - 2 ||A B^T||_F^2 (A, B: C x P);
- l2: MSE between the features.

The teacher is an exponential moving average of the student: every `every` optimiser steps,
`teacher = decay * teacher + (1 - decay) * student` for parameters and floating buffers
(BatchNorm running statistics); it always runs in eval mode and never gets gradients.
A distillation loss that is exactly zero (the official code once trained with a teacher that
was never built) raises TrainingError instead of training on nothing.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from .masks import mask_refine


class EmaTeacher:
    """An EMA copy of a model: `update(student, step)` blends every `every` steps."""

    def __init__(self, student: nn.Module, decay: float = 0.99, every: int = 10):
        self.module = copy.deepcopy(student).eval().requires_grad_(False)
        self.decay = float(decay)
        self.every = int(every)
        self.updates = 0
        s_params = {id(p) for p in student.parameters()}
        if any(id(p) in s_params for p in self.module.parameters()):  # pragma: no cover - deepcopy guarantees it
            raise TrainingError("the EMA teacher shares parameters with the student")

    @torch.no_grad()
    def blend(self, student: nn.Module) -> None:
        """teacher = decay * teacher + (1 - decay) * student, now."""
        w = 1.0 - self.decay
        t_state = self.module.state_dict()
        for name, s in student.state_dict().items():
            t = t_state[name]
            if t.is_floating_point():
                t.lerp_(s.detach().to(t.dtype), w)  # t + w * (s - t)
            else:
                t.copy_(s)
        self.updates += 1

    def update(self, student: nn.Module, step: int) -> bool:
        """Call after optimiser step `step` (1-based); blends when step % every == 0."""
        if step % self.every == 0:
            self.blend(student)
            return True
        return False

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def central(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The central `fraction` of a (N, C, h, w) map (trimmed equally on each side, >= 1 pixel kept)."""
    h, w = x.shape[-2:]
    ty = min(int(round(h * (1 - fraction) / 2)), (h - 1) // 2)
    tx = min(int(round(w * (1 - fraction) / 2)), (w - 1) // 2)
    return x[..., ty : h - ty, tx : w - tx]


def affinity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between cosine Gram matrices of two (N, C, h, w) maps, averaged over N. float32."""
    a = F.normalize(student.float().flatten(2), dim=1)  # (N, C, P)
    b = F.normalize(teacher.float().flatten(2), dim=1)
    C, P = a.shape[1], a.shape[2]
    if P <= C:
        ga = a.transpose(1, 2) @ a  # (N, P, P)
        gb = b.transpose(1, 2) @ b
        return ((ga - gb) ** 2).mean(dim=(1, 2)).mean()
    aa = a @ a.transpose(1, 2)  # (N, C, C)
    bb = b @ b.transpose(1, 2)
    ab = a @ b.transpose(1, 2)
    sq = aa.pow(2).sum((1, 2)) + bb.pow(2).sum((1, 2)) - 2 * ab.pow(2).sum((1, 2))
    return (sq.clamp_min(0) / (P * P)).mean()


def l2_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


def resize_to(x: torch.Tensor, side: int) -> torch.Tensor:
    """Area average when shrinking (the footprint of many teacher pixels), bilinear otherwise."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    if side <= min(x.shape[-2:]):
        return F.interpolate(x, size=(side, side), mode="area")
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


@torch.no_grad()
def teacher_targets(teacher, features, autocast, t_images: torch.Tensor, t_masks: torch.Tensor, alpha: float,
                    mode: str = "vectorised") -> torch.Tensor:
    """The stage-2 target: teacher crops (N, 3, T, T) + masks (N, M, m, m) -> mask-refined teacher
    features (N, C, m, m). features: images -> raw backbone features; autocast: () -> context.
    Training and `loftup viz pseudo-gt` both call this."""
    lr = features(t_images)
    with autocast():
        out = teacher(lr, t_images)
    out = out.float()
    m = t_masks.shape[-1]
    if out.shape[-1] != m:
        out = resize_to(out, m)
    if t_masks.shape[1]:
        out = mask_refine(out, t_masks, alpha, mode)
    return out


class Stage2Objective:
    """Loss of one stage-2 batch; owns the EMA teacher."""

    name = "stage2"

    def __init__(self, cfg, student: nn.Module):
        self.teacher = EmaTeacher(student, cfg.ema_decay, cfg.ema_every)
        self.alpha = float(cfg.teacher_alpha)
        self.mode = cfg.refine_mode
        self.weight = float(cfg.distill_weight)
        self.fraction = float(cfg.center_fraction)
        self.loss_fn = affinity_loss if cfg.distill_loss == "affinity" else l2_loss

    def teacher_targets(self, trainer, t_images: torch.Tensor, t_masks: torch.Tensor) -> torch.Tensor:
        """Teacher crops (N, 3, T, T) + masks (N, M, m, m) -> refined teacher features (N, C, m, m)."""
        return teacher_targets(self.teacher, trainer.features, trainer.autocast, t_images, t_masks, self.alpha, self.mode)

    def loss(self, trainer, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        image = batch["image"]
        B, K = batch["t_images"].shape[:2]
        t_out = self.teacher_targets(trainer, batch["t_images"].flatten(0, 1), batch["t_masks"].flatten(0, 1))
        lr = trainer.features(image)
        with trainer.autocast():
            s_out = trainer.model(lr, image)  # (B, C, S, S)
        boxes = batch["t_boxes"].tolist()
        losses = []
        for i in range(B * K):
            b, k = divmod(i, K)
            oy, ox, s = boxes[b][k]
            st = s_out[b : b + 1, :, oy : oy + s, ox : ox + s]
            te = resize_to(t_out[i : i + 1], s)
            losses.append(self.loss_fn(central(st, self.fraction), central(te, self.fraction)))
        distill = torch.stack(losses).mean()
        if float(distill.detach()) == 0.0:
            raise TrainingError(
                "the distillation loss is exactly zero: the teacher gives the student nothing to learn "
                "(teacher identical to student on identical inputs, or constant images); check --init and the data"
            )
        return self.weight * distill, {"distill": float(distill.detach())}

    def after_step(self, trainer, step: int) -> None:
        self.teacher.update(trainer.core, step)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "teacher_updates": self.teacher.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.teacher.updates = int(state.get("teacher_updates", 0))
