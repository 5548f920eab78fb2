"""The upsampler kinds behind one factory: LoftUp, LiFT and FeatUp's JBU.

    up = build_upsampler("featup_jbu", 384)                         # random init, eval mode
    up = build_upsampler("lift", 384, weights="lift_dinov2s.pth", patch_size=14)
    hr = up(lr_feats, image)                                        # each kind's own call and output size

One table (`KINDS`) maps a name to its module, its config, the key that identifies its state
dict, the prefixes its official files use and its native output size. Every kind keeps the
official call `up(lr_feats, image)` and its official output size (LoftUp: the guidance size;
LiFT: 2h x 2w; FeatUp-JBU: 16h x 16w); `loftup.pipeline.fit_output` is the one place that
brings an output to the guidance size (bilinear), for engines, export, eval and bench.

Files (read by `loftup.model.checkpoint.load_checkpoint`, which calls `load_baseline` here;
`build_upsampler` lives there too, since it may load weights):
- ours: `.safetensors` whose metadata names the kind (`loftup_kind`) and its config;
- official LiFT: a plain state dict (`module.` prefixes stripped, as the official loader does);
- official FeatUp: a bare JBUStack state dict, or a Lightning checkpoint with the JBU under
  `state_dict["upsampler.*"]` (backbone, downsampler and scale_net dropped; `model.1.norm.*`
  is the use_norm ChannelNorm). JBU keys under any other prefix are an error, never a silent
  partial load (FeatUp's own loader uses strict=False and would load nothing);
- official LoftUp: as before (`loftup.model.checkpoint`).
A file of one kind asked for as another (`--upsampler`) is a CheckpointError that names both.
Models are returned in eval mode.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, check_choice

KIND_KEY = "loftup_kind"  # safetensors metadata of our checkpoints: the kind, its config, free-form meta
CONFIG_KEY = "loftup_config"
META_KEY = "loftup_meta"
# LoftUp's run-time knobs: meaningless for the other kinds, so dropped for them (not an error)
LOFTUP_RUNTIME_KNOBS = ("attn_backend", "attn_budget_mb", "tiling", "tile_size", "tile_threshold", "minmax")


@dataclass(frozen=True)
class UpsamplerKind:
    """One row of the kind table."""

    name: str
    title: str  # how tables and docs name it
    module: str  # "module:Class" of the nn.Module
    config: str  # "module:Class" of its config dataclass
    marker: str  # a state-dict key (suffix) only this kind has
    prefixes: tuple[str, ...]  # prefixes its official files may put before the keys
    native_output: str  # the official output size
    source: str  # where the architecture comes from

    def _load(self, spec: str):
        import importlib

        mod, attr = spec.split(":")
        return getattr(importlib.import_module(mod, __package__), attr)

    @property
    def module_class(self) -> type:
        return self._load(self.module)

    @property
    def config_class(self) -> type:
        return self._load(self.config)


KINDS: dict[str, UpsamplerKind] = {
    k.name: k
    for k in (
        UpsamplerKind("loftup", "LoftUp", ".upsampler:LoftUp", ".config:LoftUpConfig", "first_conv.1.weight",
                      ("", "upsampler."), "the guidance image's size", "andrehuang/loftup (hub models)"),
        UpsamplerKind("lift", "LiFT", ".lift:LiFT", ".lift:LiftConfig", "image_convs_1.0.weight",
                      ("",), "2h x 2w", "LiFT as andrehuang/loftup upsamplers/lift.py uses it"),
        UpsamplerKind("featup_jbu", "FeatUp (JBU)", ".featup_jbu:FeatUpJBU", ".featup_jbu:JbuConfig", "up1.range_temp",
                      ("", "upsampler."), "16h x 16w", "mhamilton723/FeatUp JBUStack"),
    )
}
UPSAMPLER_KINDS = tuple(KINDS)


def kind_of(model: nn.Module) -> str:
    """The kind name of an upsampler module (a DDP wrapper is looked through)."""
    model = getattr(model, "module", model)
    return getattr(model, "kind", "loftup")


def _strip_ddp(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {re.sub(r"^(module\.)+", "", k): v for k, v in sd.items()}


def detect_kind(sd: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(kind, prefix of its keys) of a state dict; (None, '') when no kind's marker key is present.

    Our files name their kind in the metadata; official files are recognised by a marker key.
    """
    meta = meta or {}
    if KIND_KEY in meta:
        kind = meta[KIND_KEY]
        if kind not in KINDS:
            raise CheckpointError(f"the checkpoint says it holds a {kind!r} upsampler, which this loftup does not know "
                                  f"(known: {', '.join(KINDS)}); update loftup")
        return kind, ""
    sd = _strip_ddp(sd)
    found: dict[str, set[str]] = {}
    for key in sd:
        for kind in KINDS.values():
            if key == kind.marker or key.endswith("." + kind.marker):
                found.setdefault(kind.name, set()).add(key[: len(key) - len(kind.marker)])
    if not found:
        return None, ""
    if len(found) > 1:
        raise CheckpointError(f"the checkpoint mixes the keys of several upsampler kinds ({', '.join(sorted(found))}); "
                              "give a file holding one upsampler")
    (kind, prefixes), = found.items()
    if len(prefixes) > 1:
        raise CheckpointError(f"the checkpoint holds several {KINDS[kind].title} upsamplers (under {sorted(prefixes)}); give one")
    return kind, next(iter(prefixes))


def check_kind(found: str, wanted: str | None, source: str) -> None:
    """CheckpointError when the file holds another kind than the one asked for."""
    if wanted is not None:
        check_choice("upsampler kind", wanted, KINDS)
        if found != wanted:
            raise CheckpointError(
                f"{source} holds a {found} upsampler, not {wanted}; pass --upsampler {found} (or a {wanted} checkpoint)"
            )


def _baseline_state_dict(kind: UpsamplerKind, sd: dict[str, torch.Tensor], prefix: str, source: str) -> dict[str, torch.Tensor]:
    """The kind's own keys, taken from under `prefix` (validated against the kind's official prefixes)."""
    sd = _strip_ddp(sd)
    if prefix not in kind.prefixes:
        expected = " or ".join(repr(p) if p else "no prefix" for p in kind.prefixes)
        raise CheckpointError(
            f"{source}: the {kind.title} keys are under prefix {prefix!r}, expected {expected} "
            f"(e.g. {prefix}{kind.marker}); rename the keys, or give the official file"
        )
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if kind.name == "featup_jbu" and prefix:  # a Lightning checkpoint: the ChannelNorm sits beside the upsampler
        for k, v in sd.items():
            if k.startswith("model.1.norm."):
                out["channelnorm.norm." + k[len("model.1.norm."):]] = v
    return out


def _infer_config(kind: str, sd: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Architecture fields read off an official state dict."""
    try:
        if kind == "lift":
            return {"feat_dim": int(sd["outc.weight"].shape[0])}
        C = int(sd["fixup_proj.1.weight"].shape[0])
        return {"feat_dim": C, "use_norm": "channelnorm.norm.weight" in sd}
    except KeyError as e:
        raise CheckpointError(f"{source}: not a complete {KINDS[kind].title} checkpoint (key {e.args[0]!r} is missing)") from None


def runtime_overrides(kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config overrides that apply to `kind` (LoftUp's run-time knobs are dropped for the others)."""
    return {k: v for k, v in overrides.items() if not (kind != "loftup" and k in LOFTUP_RUNTIME_KNOBS)}


def load_baseline(kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str | Path,
                  feat_dim: int | None = None, **config_overrides: Any) -> nn.Module:
    """A LiFT / FeatUp-JBU module from a read state dict (ours or official), strict, eval mode."""
    from ..io import state_dict_mismatch

    row = KINDS[kind]
    source = str(source)
    name = Path(source).name
    if CONFIG_KEY in meta and KIND_KEY in meta:
        sd, prefix = _strip_ddp(tensors), ""
        try:
            fields = json.loads(meta[CONFIG_KEY])
        except ValueError as e:
            raise CheckpointError(f"{source}: unreadable upsampler config in metadata ({e})") from None
    else:
        _, prefix = detect_kind(tensors)
        sd = _baseline_state_dict(row, tensors, prefix, source)
        fields = _infer_config(kind, sd, source)
    fields.update(runtime_overrides(kind, config_overrides))
    try:
        cfg = row.config_class.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: unusable {row.title} config ({e})") from None
    if feat_dim is not None and int(cfg.feat_dim) != int(feat_dim):
        raise CheckpointError(
            f"checkpoint {name} upsamples {cfg.feat_dim}-channel features but the backbone gives {feat_dim}; "
            f"use a {row.title} trained for this backbone"
        )
    model = row.module_class(cfg)
    problems = state_dict_mismatch(model, sd)
    if problems:
        raise CheckpointError(f"{source} does not fit a {row.title} upsampler with {cfg.feat_dim} channels: {problems}")
    model.load_state_dict(sd, strict=False)  # exact fit checked above (BatchNorm counters may be absent)
    model.source_checkpoint = source
    model.meta = json.loads(meta[META_KEY]) if META_KEY in meta else {}
    return model.eval()


__all__ = ["CONFIG_KEY", "KINDS", "KIND_KEY", "META_KEY", "UPSAMPLER_KINDS", "UpsamplerKind", "check_kind", "detect_kind",
           "kind_of", "load_baseline"]
