"""loftup.pipeline: the one backbone-input rule, the guidance image, and the guard that keeps
every other module from resizing images for a backbone on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from loftup.errors import InputError
from loftup.pipeline import (
    Pipeline,
    backbone_input,
    backbone_input_size,
    guidance_image,
    output_size,
    prepare_image,
)

PACKAGE = Path(__file__).resolve().parents[1] / "loftup"


def test_backbone_input_size_rules():
    assert backbone_input_size(333, 517, 14) == (322, 504)  # own size, rounded down to whole patches
    assert backbone_input_size(448, 597, 14, 448) == (448, 588)  # shorter side 448, 597 -> 588
    assert backbone_input_size(70, 109, 14, 224) == (224, 336)  # upscaled: 224 x 348.8 -> 349 -> 336
    assert backbone_input_size(70, 109, 14, (60, 100)) == (56, 98)  # a pair is rounded down too
    assert backbone_input_size(20, 15, 14) == (14, 14)
    with pytest.raises(InputError, match="smaller than one 14x14"):
        backbone_input_size(10, 30, 14)
    with pytest.raises(InputError, match="at least 14"):
        backbone_input_size(100, 100, 14, 10)


def test_output_size_keeps_aspect():
    assert output_size(333, 517, 70) == (70, 109)
    assert output_size(480, 640, 448) == (448, 597)
    assert output_size(480, 640, None) == (480, 640)
    assert output_size(480, 640, (50, 60)) == (50, 60)


def test_backbone_input_resizes_only_when_needed():
    x = torch.randn(2, 3, 56, 70)
    assert backbone_input(x, 14) is x  # already whole patches: no copy, no resampling
    y = backbone_input(torch.randn(1, 3, 60, 75), 14)
    assert y.shape == (1, 3, 56, 70)
    z = backbone_input(torch.randn(1, 3, 112, 112), 14, 56)
    assert z.shape == (1, 3, 56, 56)
    # bilinear, align_corners=False on the normalised tensor: a constant image stays constant
    c = torch.full((1, 3, 61, 89), 0.25)
    assert torch.allclose(backbone_input(c, 14), torch.full((1, 3, 56, 84), 0.25))


def test_prepare_image_and_guidance(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("RGB", (640, 480), (128, 128, 128)).save(path)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = prepare_image(path, 448, mean, std)
    assert x.shape == (1, 3, 448, 597)
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=1e-6)
    assert prepare_image(np.zeros((30, 40, 3), np.uint8), None).shape == (1, 3, 30, 40)
    with pytest.raises(InputError, match="uint8"):
        prepare_image(np.zeros((30, 40), np.float32), None)
    assert guidance_image(x, (100, 120)).shape == (1, 3, 100, 120)
    assert guidance_image(x, None) is x


class _Recorder(nn.Module):
    """A stand-in backbone that records what it was given."""

    patch_size, embed_dim, mean, std = 14, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def forward(self, x):
        self.seen = x
        return x[:, :1].repeat(1, 4, 1, 1)[..., ::14, ::14]


def test_pipeline_runs_backbone_on_the_resized_guidance_image():
    bb = _Recorder()
    pipe = Pipeline(bb, lambda lr, image: (lr, image), input_size=None)
    image = torch.randn(1, 3, 61, 89)
    lr, guidance = pipe(image)
    assert guidance is image and bb.seen.shape == (1, 3, 56, 84) and lr.shape == (1, 4, 4, 6)
    Pipeline(bb, lambda lr, image: None, input_size=28)(image)
    assert bb.seen.shape == (1, 3, 28, 28 * 89 // 61 // 14 * 14)


# Every resampling call in the package outside loftup/pipeline.py, with why it is not a
# backbone-input resize. A new one fails this test: route backbone inputs through
# loftup.pipeline (backbone_input / Pipeline), or add the call here with its reason.
ALLOWED_RESAMPLING = {
    "model/upsampler.py": (2, "LoftUp's own low-res position embedding; its guidance image at the output size"),
    "model/featup_jbu.py": (1, "FeatUp-JBU's own bicubic 2x of the features inside each stage (part of the official model)"),
    "backbones/vit.py": (2, "position-embedding grid resize inside the ViT"),
    "backbones/clip.py": (1, "position-embedding grid resize inside CLIP"),
    "commands/pictures.py": (5, "feature panels (nearest, bilinear, low-res maps enlarged for display) and input panels"),
    "commands/viz.py": (3, "display copies of the input image and of the masks"),
    "commands/upsample.py": (1, "the input panel of the PCA picture"),
    "train/data.py": (1, "training crops at the training size: the pipeline input itself"),
    "train/stage1.py": (3, "the pseudo-GT (low-res features upsampled bicubically), the oracle target and its blend with the "
                           "low-res features (features, not images)"),
    "train/stage2.py": (2, "teacher outputs brought to the student crop (area / bilinear)"),
    "train/baselines.py": (1, "FeatUp's training jitter: the same zoom of the image and of its upsampled features"),
    "eval/datasets.py": (2, "labels resized to the evaluation size"),
    "eval/mini.py": (1, "predictions brought to the label size"),
    "eval/upsamplers.py": (2, "the interpolation baselines and the oracle row (features, not images)"),
    "eval/probes.py": (2, "predictions and first-frame labels brought to the feature / label size"),
    "eval/ovseg.py": (4, "ProxyCLIP: CLIP values to the proxy-feature size, logits to the window and label size; the proxy grid size"),
}
RESAMPLING_NAMES = {"interpolate", "resize", "resize_for_backbone", "backbone_input_size", "upsample"}


def _resampling_calls(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in RESAMPLING_NAMES:
                lines.append(node.lineno)
    return lines


def test_only_the_pipeline_resizes_images_for_a_backbone():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "pipeline.py":
            continue
        lines = _resampling_calls(path)
        if lines:
            found[rel] = lines
    unexpected = {rel: lines for rel, lines in found.items() if len(lines) > ALLOWED_RESAMPLING.get(rel, (0, ""))[0]}
    assert not unexpected, (
        f"resampling calls outside loftup/pipeline.py that are not accounted for: {unexpected}; a backbone input must "
        "come from loftup.pipeline (backbone_input / Pipeline)"
    )
    stale = {rel for rel, (count, _) in ALLOWED_RESAMPLING.items() if len(found.get(rel, [])) < count}
    assert not stale, f"the allow-list names calls that are gone (tighten it): {stale}"


def test_the_scan_catches_a_new_resize(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import torch.nn.functional as F\n\ndef f(bb, x):\n    return bb(F.interpolate(x, size=(224, 224)))\n")
    assert _resampling_calls(sneaky) == [4]


def test_engine_module_imports_no_runtime():
    code = ("import sys, loftup.export.engine, loftup.export.formats, loftup.export.metadata; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript', 'tensorrt') "
            "or m in ('loftup.export.onnx', 'loftup.export.tensorrt')]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_format_table_drives_load_engine(tmp_path, monkeypatch):
    from loftup.export import formats
    from loftup.export.engine import load_engine

    row = formats.FORMATS["onnx"]
    assert row.hook("open").__name__ == "OnnxEngine" and row.hook("build") is None
    assert formats.FORMATS["trt"].hook("build").__name__ == "build_plan"
    opened = {}
    monkeypatch.setattr("loftup.export.onnx.OnnxEngine", lambda path, **kw: opened.setdefault("call", (path.name, kw)))
    (tmp_path / "m.onnx").write_bytes(b"x")
    load_engine(tmp_path / "m.onnx", threads=3)
    assert opened["call"] == ("m.onnx", {"providers": None, "threads": 3})
