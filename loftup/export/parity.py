"""Parity: an engine against the PyTorch reference on real photos, with per-precision tolerances.

Inputs are scikit-image's bundled photos (astronaut, chelsea, coffee, rocket), resized to each
test shape and normalised with the engine's mean/std. The upsampler form also needs low-res
features: the reference's backbone gives them when it has one; otherwise a fixed, seeded
random patch embedding of the same photo stands in (features that follow the image content,
so the attention has real structure to work on).

Reported per shape: max abs error, mean abs error, mean and min cosine similarity of the
per-pixel feature vectors. Tolerances (outputs are layer-normed, about unit scale):

| precision | max abs | mean cos | min cos |
|---|---|---|---|
| fp32 | 2e-2 | 0.99999 | 0.9999 |
| fp16 | 0.15 | 0.9999 | 0.999 |
| bf16 | 0.5 | 0.999 | 0.99 |

Why: fp32 PyTorch itself differs from float64 by ~1.5e-3 max abs on this model, because the
Fourier features take sin of coordinates times up to e^10 ~ 22026, so one float32 ulp of a
coordinate is ~1e-3 rad; an exact float32 engine lands at 1e-3 (measured 1-3e-3, cosine
> 0.999999), and the tolerance leaves 10x room. fp16 keeps the Fourier featurizers in float32
and everything else in half precision (measured ~5e-3 / min cos 0.999998 on a small model);
bf16 has an 8-bit mantissa, ~8x fp16's rounding (measured ~5e-2 / 0.9999). A broken
reduced-precision path must fail: with the float32 region cut short (only Sin/Cos pinned, or
nothing), the C=32 test model's fp16 engine measured max abs 1.2-1.8 / min cos 0.73-0.91 and its
bf16 engine 2.4 / 0.67, against 4.9e-3 / 0.999998 (fp16) and 3.5e-2 / 0.99992 (bf16) when
correct (tests/export/test_tensorrt_fake.py, whose fake TensorRT runs unpinned layers in fp16 /
bf16): the fp16 max abs sits 30x above the correct engine's error and 8x below the broken one's
(bf16: 14x and 4.7x).

A result object is truthy only when every shape passed; its dict goes into engine metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

PARITY_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@dataclass(frozen=True)
class Tolerance:
    """Limits on `compare`'s numbers; `passes(err)` is the one pass/fail check of every
    engine-vs-reference comparison (export, bench, eval, demo)."""

    max_abs: float
    mean_cos: float
    min_cos: float

    def passes(self, err: dict[str, float]) -> bool:
        return err["max_abs"] <= self.max_abs and err["mean_cos"] >= self.mean_cos and err["min_cos"] >= self.min_cos


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=2e-2, mean_cos=0.99999, min_cos=0.9999),
    "fp16": Tolerance(max_abs=0.15, mean_cos=0.9999, min_cos=0.999),
    "bf16": Tolerance(max_abs=0.5, mean_cos=0.999, min_cos=0.99),
}


def tolerance_for(precision: str, fmt: str | None = None) -> Tolerance:
    """The feature tolerance of an engine: its format row's own for a quantized precision
    (`loftup.export.formats.EngineFormat.tolerances`, e.g. ONNX int8), else `TOLERANCES`."""
    from ..errors import ConfigError
    from .formats import FORMATS

    row = FORMATS[fmt].tolerance(precision) if fmt in FORMATS else None
    if row is not None:
        return Tolerance(max_abs=row.max_abs, mean_cos=row.mean_cos, min_cos=row.min_cos)
    if precision not in TOLERANCES:
        raise ConfigError(f"no parity tolerance for {precision} engines of format {fmt}")
    return TOLERANCES[precision]


@dataclass
class ShapeParity:
    """Errors of one input shape (batch, height, width)."""

    batch: int
    height: int
    width: int
    photos: list[str]
    max_abs: float
    mean_abs: float
    mean_cos: float
    min_cos: float
    passed: bool

    def line(self) -> str:
        mark = "ok" if self.passed else "FAIL"
        return (f"{self.batch}x{self.height}x{self.width}: max abs {self.max_abs:.2e}, mean abs {self.mean_abs:.2e}, "
                f"cos mean {self.mean_cos:.6f} min {self.min_cos:.6f} [{mark}]")


@dataclass
class ParityResult:
    """Parity of an engine against the PyTorch reference; truthy only if every shape passed."""

    precision: str
    tolerance: dict[str, float]
    shapes: list[ShapeParity] = field(default_factory=list)
    reference: str = "PyTorch fp32, BatchNorm unfolded, sdpa attention"

    @property
    def passed(self) -> bool:
        return bool(self.shapes) and all(s.passed for s in self.shapes)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def worst(self) -> dict[str, float]:
        return {
            "max_abs": max(s.max_abs for s in self.shapes),
            "min_cos": min(s.min_cos for s in self.shapes),
            "mean_cos": min(s.mean_cos for s in self.shapes),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParityResult":
        return cls(precision=d["precision"], tolerance=dict(d["tolerance"]), reference=d.get("reference", ""),
                   shapes=[ShapeParity(**s) for s in d.get("shapes", [])])

    def summary(self) -> str:
        tol = self.tolerance
        head = f"parity {'passed' if self.passed else 'FAILED'} ({self.precision}; tolerance max abs {tol['max_abs']:g}, min cos {tol['min_cos']:g})"
        return "\n".join([head] + ["  " + s.line() for s in self.shapes])


def default_parity_shapes(min_size: int, opt_size: int, max_size: int, max_batch: int = 2) -> list[tuple[int, int, int]]:
    """Three (batch, H, W) shapes inside [min_size, max_size]: opt square, an odd non-square one
    with batch 2 (if allowed), and the minimum size."""

    def clamp(v: int) -> int:
        return max(min_size, min(max_size, v))

    def odd(v: int) -> int:
        v = clamp(v)
        if v % 2 == 0:
            v = v + 1 if v + 1 <= max_size else v - 1
        return clamp(v)

    h = odd((min_size + opt_size) // 2 + 1)
    w = odd(h + 2 * max(1, (opt_size - min_size) // 8))
    return [(1, opt_size, opt_size), (min(2, max_batch), h, w), (1, min_size, min_size)]


def photo_batch(batch: int, height: int, width: int, mean, std, offset: int = 0):
    """(batch, 3, H, W) float32 pipeline inputs (`loftup.pipeline.prepare_image`) of bundled photos; their names."""
    import torch

    from ..pipeline import prepare_image
    from ..io.samples import load_sample

    names = [PARITY_PHOTOS[(offset + i) % len(PARITY_PHOTOS)] for i in range(batch)]
    x = torch.cat([prepare_image(load_sample(name), (height, width), mean, std) for name in names])
    return x, names


def photo_features(image, feat_dim: int, patch_size: int, seed: int = 0):
    """Stand-in low-res features when no backbone is at hand: a seeded random linear patch
    embedding of the image (resized to whole patches), through a GELU. (B, C, H//p, W//p)."""
    import torch
    import torch.nn.functional as F

    from ..pipeline import backbone_input

    p = patch_size
    B = image.shape[0]
    x = backbone_input(image, p)
    h, w = x.shape[-2] // p, x.shape[-1] // p
    patches = F.unfold(x, kernel_size=p, stride=p)  # (B, 3*p*p, h*w)
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(feat_dim, patches.shape[1], generator=g) / patches.shape[1] ** 0.5
    feats = F.gelu(proj @ patches) * 4.0  # raw backbone features are O(1-10)
    return feats.reshape(B, feat_dim, h, w)


def parity_inputs(shape: tuple[int, int, int], scope: str, reference, mean, std, patch_size: int | None, offset: int = 0):
    """The engine inputs for one shape, and the photo names."""
    b, H, W = shape
    image, names = photo_batch(b, H, W, mean, std, offset)
    if scope == "pipeline":
        return (image,), names
    if getattr(reference, "pipeline", None) is not None:
        lr = reference.backbone_features(image)
    else:
        lr = photo_features(image, reference.metadata.feat_dim, patch_size or 14)
    return (lr.float(), image), names


def compare(out, ref) -> dict[str, float]:
    """The one engine-vs-reference comparison: max abs, mean abs, mean and min per-pixel cosine
    similarity (over channels) of two (B, C, H, W); a non-finite output scores inf / -1."""
    import torch
    import torch.nn.functional as F

    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    if out.shape != ref.shape:
        from ..errors import InputError

        raise InputError(f"engine output shape {tuple(out.shape)} differs from the reference {tuple(ref.shape)}; "
                         "the engine was built for other inputs - export it again")
    diff = (out - ref).abs()
    cos = F.cosine_similarity(out, ref, dim=1, eps=1e-12)
    finite = bool(torch.isfinite(out).all())
    return {
        "max_abs": float(diff.max()) if finite else float("inf"),
        "mean_abs": float(diff.mean()) if finite else float("inf"),
        "mean_cos": float(cos.mean()) if finite else -1.0,
        "min_cos": float(cos.min()) if finite else -1.0,
    }


def check_parity(engine, reference, shapes: Sequence[tuple[int, int, int]], precision: str | None = None,
                 tolerance: Tolerance | None = None) -> ParityResult:
    """Run `engine` and `reference` (a TorchEngine in fp32) on photos at each (batch, H, W).

    The form (pipeline or upsampler) is the engine's scope; precision picks the tolerance
    (default: the engine's metadata precision).
    """
    md = engine.metadata
    precision = precision or md.precision
    tol = tolerance or tolerance_for(precision, md.format)
    result = ParityResult(precision=precision, tolerance=asdict(tol))
    mean, std = md.mean or reference.metadata.mean, md.std or reference.metadata.std
    for i, shape in enumerate(shapes):
        inputs, names = parity_inputs(tuple(shape), md.scope, reference, mean, std, md.patch_size, offset=i)
        got = engine(*inputs)
        want = reference(*inputs)
        err = compare(got, want)
        ok = tol.passes(err)
        result.shapes.append(ShapeParity(batch=shape[0], height=shape[1], width=shape[2], photos=names, passed=ok, **err))
    return result
