"""Checkpoint I/O: official hub `pytorch_model.bin`, bare safetensors, Lightning checkpoints, ours.

Our format: `NAME.safetensors` whose metadata holds the upsampler's kind (`loftup_kind`:
loftup, lift, featup_jbu) and its config as JSON (key `loftup_config`), plus a human-readable
`NAME.json` sidecar with the same config and any extra metadata. Files written before kinds
existed have no `loftup_kind` and are LoftUp files. The other kinds' official layouts are
read in loftup.model.kinds; `load_checkpoint` dispatches on what a file holds. Files are written to a temporary name and renamed, so a crash leaves no half file.
Pickles are only ever read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, check_choice
from ..io import atomic_write, read_tensors, state_dict_mismatch
from . import registry
from .config import LoftUpConfig
from .kinds import (
    CONFIG_KEY,
    KIND_KEY,
    KINDS,
    META_KEY,
    check_kind,
    detect_kind,
    kind_of,
    load_baseline,
    runtime_overrides,
)
from .registry import shipped_checkpoint  # noqa: F401  (callers import it from here too)
from .upsampler import LoftUp


# -- reading raw state dicts ----------------------------------------------------------------
def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint file, or of a hub folder's model file."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()), None)
        if found is None:
            raise CheckpointError(f"{path} is a folder without model.safetensors or pytorch_model.bin")
        path = found
    return read_tensors(path)


def to_official_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map known layouts onto the hub wrapper's keys (`upsampler.*`, `channelnorm.*`).

    - DDP `module.` prefixes are stripped.
    - Lightning: `model.1.norm.*` is the channel norm; `model.0.*` (the backbone) is dropped.
    - A bare LoftUp state dict (PyTorchModelHubMixin upload) gets the `upsampler.` prefix.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        key = re.sub(r"^(module\.)+", "", key)
        if key.startswith("model.1.norm."):
            key = "channelnorm.norm." + key[len("model.1.norm."):]
        elif key.startswith("model.0.") or key.startswith("backbone."):
            continue
        out[key] = value
    if out and not any(k.startswith("upsampler.") for k in out) and any(k.startswith("first_conv.") for k in out):
        out = {("upsampler." + k if not k.startswith("channelnorm.") else k): v for k, v in out.items()}
    return out


def infer_config(sd: dict[str, torch.Tensor], **overrides: Any) -> LoftUpConfig:
    """Read C, PE type, frequencies, depth and conv kernel off the weights (heads default to 4)."""
    try:
        C, D = sd["upsampler.final_conv.0.weight"].shape[:2]
        n_freqs = sd["upsampler.fourier_feat.1.biases"].shape[-1]
        kernel = sd["upsampler.first_conv.1.weight"].shape[-1]
    except KeyError as e:
        raise CheckpointError(f"not a LoftUp checkpoint: key {e.args[0]!r} is missing") from None
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"upsampler\.ca_transformer\.layers\.(\d+)\.", k))}
    lr_pe = "none"
    lr_n_freqs, lr_pe_size = 5, 16
    if "upsampler.lr_pe.biases" in sd:
        lr_pe, lr_n_freqs = "sine", sd["upsampler.lr_pe.biases"].shape[-1]
    elif "upsampler.lr_pe" in sd:
        lr_pe, lr_pe_size = "learnable", sd["upsampler.lr_pe"].shape[-1]
    fields = dict(
        feat_dim=int(C), n_freqs=int(n_freqs), image_conv_kernel=int(kernel), num_blocks=max(blocks) + 1 if blocks else 0,
        lr_pe=lr_pe, lr_n_freqs=int(lr_n_freqs), lr_pe_size=int(lr_pe_size),
    )
    fields.update(overrides)
    cfg = LoftUpConfig(**fields)
    if cfg.token_dim != D:
        raise CheckpointError(f"inconsistent checkpoint: token width {D} but feat_dim {C} with lr_pe {lr_pe!r} gives {cfg.token_dim}")
    return cfg


def load_into(model: LoftUp, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> LoftUp:
    """Strict load with a readable error for missing / unexpected keys and shape mismatches."""
    problems = state_dict_mismatch(model, sd)
    if problems:
        raise CheckpointError(f"{source} does not fit this LoftUp model: {problems}")
    model.load_state_dict(sd, strict=False)
    return model


def load_checkpoint(path: str | Path, feat_dim: int | None = None, kind: str | None = None, **config_overrides: Any):
    """Build and load an upsampler from any supported checkpoint file (eval mode).

    A LoftUp file gives a LoftUp, as always; a LiFT or FeatUp-JBU file (ours, or their official
    layouts) gives that kind (see loftup.model.kinds). kind: the kind the caller wants
    (`--upsampler`); a file of another kind raises CheckpointError naming both.
    feat_dim: the backbone's channel count, if known; a mismatch raises CheckpointError.
    config_overrides: run-time knobs (attn_backend, minmax, tiling, ...), not architecture.
    """

    tensors, meta = read_state_dict(path)
    found, _ = detect_kind(tensors, meta)
    if found is None and kind not in (None, "loftup"):
        check_kind(kind, kind, str(path))  # validates the name
        raise CheckpointError(
            f"{path} holds no {KINDS[kind].title} weights (no key ending in {KINDS[kind].marker!r}); give a {kind} checkpoint"
        )
    check_kind(found or "loftup", kind, str(path))
    if found not in (None, "loftup"):
        return load_baseline(found, tensors, meta, path, feat_dim=feat_dim, **config_overrides)
    sd = to_official_keys(tensors)
    if CONFIG_KEY in meta:
        try:
            cfg = LoftUpConfig.from_dict({**json.loads(meta[CONFIG_KEY]), **config_overrides})
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: unreadable loftup config in metadata ({e})") from None
    else:
        cfg = infer_config(sd, **config_overrides)
    if "channelnorm.norm.weight" not in sd and any(k.startswith("upsampler.") for k in sd):
        warnings.warn(f"{path} has no channel-norm weights (an upsampler-only upload); using identity LayerNorm affine")
        sd["channelnorm.norm.weight"] = torch.ones(cfg.feat_dim)
        sd["channelnorm.norm.bias"] = torch.zeros(cfg.feat_dim)
    if feat_dim is not None and cfg.feat_dim != feat_dim:
        raise CheckpointError(
            f"checkpoint {Path(path).name} upsamples {cfg.feat_dim}-channel features but the backbone gives {feat_dim}; "
            "use a checkpoint trained for this backbone"
        )
    model = load_into(LoftUp(cfg), sd, source=str(path))
    model.source_checkpoint = str(path)
    model.meta = json.loads(meta[META_KEY]) if META_KEY in meta else {}
    return model.eval()


def build_upsampler(kind: str, feat_dim: int, weights: str | Path | None = None, **config: Any) -> nn.Module:
    """An upsampler of `kind` for `feat_dim`-channel features, in eval mode.

    weights: a checkpoint file (ours or the kind's official layout; its channels must be
    feat_dim, its kind `kind`); None gives a freshly initialised module (seed it yourself).
    config: the kind's config fields - LoftUp: LoftUpConfig (num_blocks, lr_pe, attn_backend,
    ...); LiFT: patch_size; FeatUp-JBU: use_norm, conv_backend. Unknown fields: ConfigError.
    """
    row = KINDS[check_choice("upsampler kind", kind, KINDS)]
    if weights is not None:
        return load_checkpoint(weights, feat_dim=feat_dim, kind=kind, **config)
    if not feat_dim or int(feat_dim) < 1:
        raise ConfigError(f"build_upsampler needs the feature channels (feat_dim), got {feat_dim!r}")
    fields = {"feat_dim": int(feat_dim), **runtime_overrides(kind, config)}
    return row.module_class(row.config_class.from_dict(fields)).eval()


def load_or_init(checkpoint: str | Path | None, *, random_init: bool = False, feat_dim: int | None = None,
                 backbone: str | None = None, seed: int = 0, kind: str | None = None, weights: str | None = None,
                 **config_overrides: Any):
    """The one way a verb gets an upsampler: `--checkpoint PATH`, `--random-init`, or - given
    neither and a `backbone` (with its `weights` source) that has one - the checkpoint shipped
    in the package (`shipped_checkpoint`). Eval mode. `model.source_checkpoint` names the file.

    feat_dim: the backbone's channels when known (a checkpoint must match it; a random model
    needs it); backbone: the name recorded in a random model's config; seed: its init.
    kind: `--upsampler` (loftup, lift, featup_jbu): the kind a checkpoint must hold, or the kind
    of a random model (default loftup).
    ConfigError when both of checkpoint / random_init are given, or neither and nothing ships.
    """

    if checkpoint is not None and random_init:
        raise ConfigError("--checkpoint and --random-init exclude each other; pick one")
    if checkpoint is None and not random_init and kind in (None, "loftup"):
        checkpoint = registry.shipped_checkpoint(backbone, weights)
    if checkpoint is not None:
        return load_checkpoint(checkpoint, feat_dim=feat_dim, kind=kind, **config_overrides)
    if not random_init:
        shipped = registry.shipped_names()
        raise ConfigError(
            "no trained weights given: pass --checkpoint PATH (an official loftup pytorch_model.bin or a "
            f"`loftup train` checkpoint), or --random-init to try an untrained upsampler (weights ship only for {shipped})"
        )
    if not feat_dim:
        raise ConfigError("--random-init needs the feature channels: pass --backbone NAME (or --feat-dim C where offered)")
    torch.manual_seed(seed)
    if kind not in (None, "loftup"):

        return build_upsampler(kind, int(feat_dim), backbone=backbone, **config_overrides)
    return LoftUp(LoftUpConfig(feat_dim=int(feat_dim), backbone=backbone, **config_overrides)).eval()


def describe_weights(model) -> str:
    """One line naming the upsampler weights a verb runs: the shipped checkpoint, a file, or random."""
    path = getattr(model, "source_checkpoint", None)
    if path is None:
        return f"{kind_name(model)} weights: random init (untrained)"
    path = Path(path)
    if path.parent == registry.SHIPPED_DIR:
        meta = getattr(model, "meta", {}) or {}
        trained = meta.get("trained", "")
        return f"{kind_name(model)} weights: shipped default {path.name}" + (f" ({trained})" if trained else "")
    return f"{kind_name(model)} weights: {path}"


def kind_name(model) -> str:
    """How tables and messages name the model's kind (`kinds.KINDS[kind].title`)."""

    return KINDS[kind_of(model)].title


def save_checkpoint(model, path: str | Path, meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write our format: weights + config + kind in one .safetensors, and a .json sidecar for humans.

    dtype: store the floating-point weights in this dtype (e.g. torch.float16 for a shipped
    checkpoint: half the size; loading casts them back to the model's float32).

    Any upsampler kind (LoftUp, LiFT, FeatUp-JBU); the kind is stored as `loftup_kind`, so
    `load_checkpoint` rebuilds the right module.
    """
    from safetensors.torch import save_file


    model = getattr(model, "module", model)  # a DDP wrapper saves its module
    kind = kind_of(model)
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    cfg = model.cfg.to_dict()
    meta = dict(meta or {})
    from .._version import __version__

    meta.setdefault("loftup_version", __version__)
    tensors = {k: v.detach().to(dtype if (dtype is not None and v.is_floating_point()) else v.dtype).contiguous().cpu()
               for k, v in model.state_dict().items()}
    metadata = {CONFIG_KEY: json.dumps(cfg), KIND_KEY: kind, META_KEY: json.dumps(meta), "format": "pt"}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))
    sidecar = {"kind": kind, "config": cfg, "meta": meta, "weights": path.name}
    atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(sidecar, indent=2)))
    return path
