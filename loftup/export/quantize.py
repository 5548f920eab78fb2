"""INT8 ONNX engines: ONNX Runtime's static quantization (QDQ, per-channel weights), calibrated on photos.

    loftup export --format onnx --precision int8 [--calibration DIR]

What is quantized: the convolutions and the weight matrix multiplies of LoftUp's full-resolution
work - the two 3x3 convs inside the row-band loop, and the q / output projections, both FFN
layers and the 1x1 head inside the query loop (`loftup.export.onnx`: the looped graph). Weights
get int8 scales per output channel, activations uint8 scales per tensor from calibration (ORT's
x86 u8s8 kernels use VNNI). Each linear with a bias (MatMul then Add) is first rewritten as one
Gemm (`linears_as_gemm`), whose quantized form takes the bias as int32 and writes float32: ORT
runs it as one QGemm, where a quantized MatMul ran as QLinearMatMul, a DequantizeLinear and a
float Add (224 px: 1.12 s a run instead of 1.48 s in an ORT profile). What stays float32: the
attention itself (q.k and p.v have no constant operand and their softmax is what the upsampler is about), every norm, the Fourier
features, the key/value projection (once per image) and, in the pipeline scope, the backbone.

How: `onnxruntime.quantization.quantize_static` only sees a model's main graph, and LoftUp's
heavy ops live in Scan bodies. So each body is cut out as a model of its own - its inputs, plus
the outer-scope values it reads as extra inputs (activations) or initializers (weights, so the
quantizer sees them as weights) - and quantized with calibration data recorded from the main
graph: the main graph is run on the calibration inputs with every value the bodies read
exposed as an output, and each loop iteration's slice becomes one calibration sample of its
body. The quantized body goes back into its Scan (new int8 weights, scales and zero points as
the body's own initializers), and float32 weights nothing reads any more are dropped. ONNX
Runtime's graph optimiser then fuses the QDQ pairs into integer kernels inside the loops as it
does in a main graph.

Calibration inputs: photos at the export's opt size - the bundled sample photos
(`loftup.io.samples`) or every image in `--calibration DIR` - with low-res features from the
export's backbone when it has one (stand-in features of the photo otherwise, see
`loftup.export.parity.photo_features`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import ConfigError, InputError

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Gemm outputs stay float (QGemm writes float32 for the norm / GELU / residual after it; see above).
# Weights in 7 bits (int8 storage, range -64..63): ORT's x86 u8s8 kernels on CPUs without VNNI
# (AVX2 - AMD Zen 1-3, Intel before Ice Lake / Cascade Lake) add pairs of uint8 x int8 products in
# int16, which saturates with full 8-bit weights. An engine runs wherever it is copied, so every
# engine gets 7-bit weights. On an AMD EPYC Zen 3 (AVX2, 2026-12-07) the tiny test model's int8
# engine had min cosine 0.946 to its fp32 engine with 8-bit weights, 0.986 with 7-bit ones.
REDUCE_RANGE = True
QUANTIZER_OPTIONS = {"CalibPercentile": 99.999, "OpTypesToExcludeOutputQuantization": ["Gemm"]}
# The bundled photos calibrated on by default (scikit-image's; the mini benchmark's images are not
# among them, so its probes judge the engine on photos it was not calibrated on).
CALIBRATION_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "immunohistochemistry", "retina")
MAX_CALIBRATION_IMAGES = 16
# Calibration size cap: LoftUp's quantized ops act per pixel on normed features, whose ranges do
# not grow with the output size; calibrating a 448 px export at 448 px costs 4x for nothing.
MAX_CALIBRATION_SIZE = 224
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------
# calibration inputs
def calibration_images(folder: str | Path | None, limit: int = MAX_CALIBRATION_IMAGES) -> list[tuple[str, Any]]:
    """(name, PIL image) of the calibration photos: `folder`'s images (sorted, at most `limit`) or
    the bundled sample photos. InputError for a folder without readable images."""
    from ..io.samples import SAMPLES, load_sample

    if folder is None:
        return [(name, load_sample(name)) for name in CALIBRATION_PHOTOS[:limit] if name in SAMPLES]
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--calibration {folder} is not a folder; give a folder of photos (jpg, png, ...)")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]:
        try:
            images.append((path.name, Image.open(path).convert("RGB")))
        except OSError:
            continue
    if not images:
        raise InputError(f"--calibration {folder} holds no readable images ({', '.join(IMAGE_SUFFIXES)}); add a few photos")
    return images


def calibration_feeds(images, size: int, scope: str, mean, std, patch: int, feat_dim: int, backbone=None) -> list[dict]:
    """ONNX input dicts (float32 numpy) for each photo at size x size: {"image"} or {"lr_feats", "image"}."""
    import torch

    from ..pipeline import backbone_input, prepare_image
    from .parity import photo_features

    feeds = []
    for _, picture in images:
        image = prepare_image(picture, (size, size), mean, std)
        if scope == "pipeline":
            feeds.append({"image": image.numpy()})
            continue
        if backbone is not None:
            with torch.no_grad():
                lr = backbone(backbone_input(image, patch)).float()
        else:
            lr = photo_features(image, feat_dim, patch)
        feeds.append({"lr_feats": lr.numpy(), "image": image.numpy()})
    return feeds


# ------------------------------------------------------------------------------------------
# graph surgery
def _body(node):
    import onnx

    for attr in node.attribute:
        if attr.name == "body" and attr.type == onnx.AttributeProto.GRAPH:
            return attr.g
    raise ConfigError(f"{node.op_type} node {node.name} has no body graph")


def _subgraphs(graph) -> Iterable:
    import onnx

    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            yield from attr.graphs


def outer_names(body) -> set[str]:
    """Names a body (and its own subgraphs) reads from enclosing scopes."""
    defined = {i.name for i in body.input} | {i.name for i in body.initializer}
    used: set[str] = set()
    for node in body.node:
        defined.update(node.output)
        used.update(n for n in node.input if n)
    for sub in _subgraphs(body):
        used |= outer_names(sub)
    return used - defined


def _used_names(graph) -> set[str]:
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(n for n in node.input if n)
    for sub in _subgraphs(graph):
        names |= outer_names(sub) | _used_names(sub)
    return names


def _loops(graph) -> list:
    return [n for n in graph.node if n.op_type == "Scan"]


def standalone_body(model, scan) -> tuple[Any, list[str]]:
    """A ModelProto of `scan`'s body: its inputs, then the outer activations it reads as extra
    inputs; the outer initializers it reads as its own initializers. Returns (model, extra input names)."""
    import onnx

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    body = copy.deepcopy(_body(scan))
    outer = sorted(outer_names(body))
    acts = [n for n in outer if n not in inits]
    body.initializer.extend(copy.deepcopy(inits[n]) for n in outer if n in inits)
    types = _value_types(model)
    for name in acts:
        elem, rank = types.get(name, (onnx.TensorProto.FLOAT, None))
        shape = None if rank is None else [f"{name}_d{i}" for i in range(rank)]
        body.input.append(onnx.helper.make_tensor_value_info(name, elem, shape))
    sub = onnx.helper.make_model(body, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return sub, acts


def _value_types(model) -> dict[str, tuple[int, int | None]]:
    """name -> (element type, rank or None) of the main graph's values, from ONNX shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    except Exception:  # inference is only a help for typing the extra inputs
        inferred = model
    g = inferred.graph
    out = {}
    for v in [*g.input, *g.value_info, *g.output]:
        t = v.type.tensor_type
        rank = len(t.shape.dim) if t.HasField("shape") else None
        out[v.name] = (t.elem_type, rank)
    return out


def record_loop_inputs(model, feeds: list[dict], threads: int | None = None) -> list[dict[str, np.ndarray]]:
    """Run the main graph on each feed with every value the loops read exposed; per feed: name -> value."""
    import onnx
    import onnxruntime as ort

    graph = model.graph
    inits = {i.name for i in graph.initializer}
    wanted: set[str] = set()
    for scan in _loops(graph):
        wanted |= {n for n in scan.input if n} | (outer_names(_body(scan)) - inits)
    wanted -= {i.name for i in graph.input}
    probe = copy.deepcopy(model)
    present = {o.name for o in probe.graph.output}
    for name in sorted(wanted - present):
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named value
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    with tempfile.TemporaryDirectory(prefix="loftup-calib-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        records = []
        for feed in feeds:
            values = dict(zip(names, session.run(names, feed)))
            records.append({**feed, **values})
    return records


class _BodyReader:
    """CalibrationDataReader over the loop iterations of one Scan: every feed, every iteration."""

    def __init__(self, scan, body, acts: list[str], records: list[dict], max_samples: int = 256):
        n_state = len(scan.input) - _num_scan_inputs(scan)
        body_inputs = [i.name for i in body.input]
        samples = []
        for values in records:
            states = [values[n] for n in scan.input[:n_state]]
            xs = [values[n] for n in scan.input[n_state:]]
            extra = {a: values[a] for a in acts}
            for it in range(xs[0].shape[0] if xs else 0):
                feed = dict(zip(body_inputs, [*states, *(x[it] for x in xs)]))
                feed.update(extra)
                samples.append(feed)
        step = max(1, len(samples) // max_samples)
        self.samples = iter(samples[::step])

    def get_next(self):
        return next(self.samples, None)

    def rewind(self):  # pragma: no cover - the quantizer reads once
        raise RuntimeError("calibration data is read once")


def _num_scan_inputs(scan) -> int:
    for attr in scan.attribute:
        if attr.name == "num_scan_inputs":
            return int(attr.i)
    raise ConfigError(f"Scan node {scan.name} has no num_scan_inputs")


def linears_as_gemm(body) -> int:
    """Rewrite each `Add(MatMul(x, W), b)` with weights W (K, N) and b (N,) as one Gemm on x
    flattened to (rows, K), reshaped back: quantized, a Gemm takes its bias as int32 and runs as
    one QGemm with a float output, where a MatMul becomes QLinearMatMul -> DequantizeLinear ->
    float bias Add. In place; returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in body.initializer}
    users: dict[str, list] = {}
    for node in body.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in body.output}
    nodes, fused, made = [], set(), 0
    for node in body.node:
        if id(node) in fused:
            continue
        add = _bias_add(node, inits, users, outputs)
        if add is None:
            nodes.append(node)
            continue
        x, w = node.input
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        K, N = inits[w].dims
        p = f"{node.name}__gemm"
        body.initializer.extend([numpy_helper.from_array(np.array([-1, K], np.int64), f"{p}_rows"),
                                 numpy_helper.from_array(np.array([N], np.int64), f"{p}_n"),
                                 numpy_helper.from_array(np.array([0], np.int64), f"{p}_0"),
                                 numpy_helper.from_array(np.array([-1], np.int64), f"{p}_m1")])
        nodes += [helper.make_node("Shape", [x], [f"{p}_shape"], name=f"{p}_shape"),
                  helper.make_node("Slice", [f"{p}_shape", f"{p}_0", f"{p}_m1"], [f"{p}_lead"], name=f"{p}_lead"),
                  helper.make_node("Concat", [f"{p}_lead", f"{p}_n"], [f"{p}_outshape"], name=f"{p}_outshape", axis=0),
                  helper.make_node("Reshape", [x, f"{p}_rows"], [f"{p}_x2"], name=f"{p}_x2"),
                  helper.make_node("Gemm", [f"{p}_x2", w, bias], [f"{p}_y2"], name=node.name),
                  helper.make_node("Reshape", [f"{p}_y2", f"{p}_outshape"], list(add.output), name=f"{p}_y")]
        fused.add(id(add))
        made += 1
    if made:
        del body.node[:]
        body.node.extend(nodes)
    return made


def _bias_add(node, inits, users, outputs):
    """The Add that adds a (N,) weight to `node`'s output, when `node` is a MatMul by a (K, N)
    weight whose only user that Add is; else None."""
    if node.op_type != "MatMul" or node.input[1] not in inits or len(inits[node.input[1]].dims) != 2:
        return None
    out = node.output[0]
    if out in outputs or len(users.get(out, [])) != 1 or users[out][0].op_type != "Add":
        return None
    add = users[out][0]
    bias = add.input[1] if add.input[0] == out else add.input[0]
    if bias not in inits or list(inits[bias].dims) != [inits[node.input[1]].dims[1]]:
        return None
    return add


def _weight_matmuls_and_convs(body, weights: set[str]) -> tuple[list[str], list[str]]:
    """(nodes to quantize, nodes to keep float): Conv / MatMul / Gemm with a weight operand vs
    the attention's activation-activation MatMuls."""
    keep, skip = [], []
    for node in body.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        (keep if any(n in weights for n in node.input[1:2]) else skip).append(node.name)
    return keep, skip


def quantize_body(model, scan, records, method: str, workdir: Path) -> Any:
    """The int8 QDQ version of one Scan body (a GraphProto ready to put back)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    sub, acts = standalone_body(model, scan)
    weights = {i.name for i in sub.graph.initializer}
    linears_as_gemm(sub.graph)
    keep, skip = _weight_matmuls_and_convs(sub.graph, weights)
    if not keep:
        return None
    src, dst = workdir / f"{scan.name}_body.onnx", workdir / f"{scan.name}_body_int8.onnx"
    onnx.save(sub, str(src))
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    with _quiet_quantizer():
        _quantize_static(
            str(src), str(dst), _BodyReader(scan, sub.graph, acts, records),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=True, reduce_range=REDUCE_RANGE, op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=keep, nodes_to_exclude=skip,
            calibrate_method=methods[method], extra_options=dict(QUANTIZER_OPTIONS),
        )
    q = onnx.load(str(dst)).graph
    outer = {i.name for i in model.graph.initializer}
    body = _body(scan)
    keep_inputs = [i for i in q.input if i.name not in set(acts)]
    del q.input[:]
    q.input.extend(keep_inputs)
    own = [i for i in q.initializer if i.name not in outer]  # new int8 weights, scales, zero points
    del q.initializer[:]
    q.initializer.extend(own)
    q.name = body.name
    _rename_shadowing(q, _all_names(model.graph))
    clash = {i.name for i in own} & _all_names(model.graph)
    if clash:
        raise ConfigError(f"quantized names clash with the graph's: {sorted(clash)[:3]}")
    return q


def _rename_shadowing(body, outer: set[str]) -> None:
    """Give body values that reuse an outer name (the quantizer names a dequantized bias after the
    float one) a name of their own: ONNX subgraphs may not redefine outer-scope names."""
    renamed = {}
    for node in body.node:
        for i, name in enumerate(node.output):
            if name in outer:
                renamed[name] = node.output[i] = f"{name}__dq"
    for node in body.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for out in body.output:
        if out.name in renamed:
            out.name = renamed[out.name]


def _quantize_static(*args, **kwargs):
    from onnxruntime.quantization import quantize_static

    return quantize_static(*args, **kwargs)


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer logs a "consider pre-processing" warning per call on the root logger; our
    bodies come straight from the exporter's optimiser, so it says nothing useful here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _all_names(graph) -> set[str]:
    names = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    for node in graph.node:
        names.update(node.output)
    return names


def quantize_loops(src: str | Path, dst: str | Path, feeds: list[dict], method: str = "minmax",
                   threads: int | None = None) -> dict[str, Any]:
    """Write an int8 version of the looped ONNX graph at `src` to `dst` (see the module docstring).
    Returns a summary: quantized node counts per loop, the calibration method and sample count."""
    import onnx

    model = onnx.load(str(src))
    loops = _loops(model.graph)
    if not loops:
        raise ConfigError("int8 export needs the looped LoftUp graph (query blocks and row bands); this graph has no loop")
    records = record_loop_inputs(model, feeds, threads)
    summary: dict[str, Any] = {"method": method, "calibration_inputs": len(feeds), "loops": []}
    with tempfile.TemporaryDirectory(prefix="loftup-int8-") as tmp:
        for scan in loops:
            q = quantize_body(model, scan, records, method, Path(tmp))
            if q is None:
                continue
            for attr in scan.attribute:
                if attr.name == "body":
                    attr.g.CopyFrom(q)
            ops: dict[str, int] = {}
            for node in q.node:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
            summary["loops"].append({"scan": scan.name, "QuantizeLinear": ops.get("QuantizeLinear", 0),
                                     "DequantizeLinear": ops.get("DequantizeLinear", 0)})
    used = _used_names(model.graph)
    unused = [i for i in model.graph.initializer if i.name not in used]
    for init in unused:
        model.graph.initializer.remove(init)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return summary


# ------------------------------------------------------------------------------------------
def quantize_engine(onnx_path: str | Path, out_path: str | Path, md, *, model, backbone=None, calibration=None,
                    size: int = 224, method: str = "minmax", log=lambda msg: None):
    """The ONNX format's `quantize` hook: the fp32 looped graph at `onnx_path` -> int8 at `out_path`,
    calibrated on photos (`calibration`: a folder, or None for the bundled ones) at `size` px.
    Returns the metadata with precision "int8" and the calibration recorded in `runtime`."""
    images = calibration_images(calibration)
    size = min(int(size), MAX_CALIBRATION_SIZE)
    patch = int(md.patch_size or getattr(backbone, "patch_size", 14) or 14)
    log(f"calibrating int8 on {len(images)} photo(s) at {size} px "
        f"({'backbone ' + backbone.name if backbone is not None else 'stand-in features'}) ...")
    feeds = calibration_feeds(images, size, md.scope, md.mean or (0.485, 0.456, 0.406), md.std or (0.229, 0.224, 0.225),
                              patch, md.feat_dim, backbone)
    summary = quantize_loops(onnx_path, out_path, feeds, method=method)
    md.precision = "int8"
    md.runtime["quantization"] = {
        **summary, "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8 per channel",
        "activations": "uint8 per tensor", "quantized_ops": list(QUANTIZED_OPS), "size": size,
        "photos": [name for name, _ in images], "calibration": str(calibration) if calibration else "bundled photos",
    }
    return md
