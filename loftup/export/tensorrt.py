"""TensorRT 10: build a `.plan` from our ONNX, and run it as an Engine.

Builder (`build_plan`): ONNX parser -> network; builder config with a workspace limit, the
FP16 or BF16 flag for reduced precision, one optimization profile per (min, opt, max) set of
input shapes, and a timing cache file that is loaded before and saved after every build (so
rebuilds and other shapes reuse measured tactics). With FP16/BF16 every layer that feeds the
Fourier features' Sin/Cos (coordinates, min-max scaling, frequency products) is pinned to
float32 with OBEY_PRECISION_CONSTRAINTS: sin of coordinates times up to e^10 is noise in half
precision. The plan goes next to a JSON sidecar (`NAME.plan.json`): the engine metadata plus
the TensorRT version, GPU, profiles and flags it was built with, and the plan's sha256.

Runtime (`TensorRTEngine`): checks the sidecar (plan hash, same TensorRT version, same GPU
architecture), deserializes, picks the optimization profile that holds the input shapes,
binds torch CUDA tensors by name (`set_input_shape`, `set_tensor_address`) and runs
`execute_async_v3` on a CUDA stream.

TensorRT cannot be installed on our development machines; this module is exercised through
a fake `tensorrt` module (tests/export/fake_tensorrt.py) that records every call. Written
against the documented TensorRT 10 Python API; TensorRT 11 removes the FP16/BF16 flags in
favour of strongly typed networks, which this module does not do yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, CheckpointError, ConfigError, InputError
from .engine import Engine
from .metadata import EngineMetadata
from .formats import FORMATS

# ONNX ops of our graphs that the TensorRT 10 ONNX parser supports (onnx-tensorrt
# docs/operators.md): a graph for TensorRT must stay inside this set.
TENSORRT10_OPS = frozenset({
    # elementwise math and comparisons
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Max", "Min", "Clip",
    "Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Sin", "Cos", "Gelu", "Floor", "Ceil",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Where",
    # layers
    "Conv", "BatchNormalization", "MatMul", "Gemm", "Softmax", "LayerNormalization",
    "ReduceMean", "ReduceMin", "ReduceMax", "ReduceSum", "Resize",
    # shapes and data movement
    "Transpose", "Reshape", "Concat", "Slice", "Expand", "Range", "Unsqueeze", "Squeeze", "Flatten",
    "Split", "Gather", "Shape", "Cast", "Constant", "ConstantOfShape", "Identity", "Tile",
})
ATTENTION_OP_MIN_TENSORRT = (10, 14)  # the ONNX Attention op is parsed from TensorRT 10.14 on
CONSTANT_AXES_OPS = ("ReduceMean", "ReduceMin", "ReduceMax", "ReduceSum", "Squeeze", "Unsqueeze")
DEFAULT_WORKSPACE_MB = 4096
OUTPUT_NAME = "hr_feats"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def install_message() -> str:
    return (f"--format trt needs TensorRT 10 and an NVIDIA GPU: {FORMATS['trt'].install_hint}; "
            "on a machine without one, export --format onnx")


def import_tensorrt():
    """The `tensorrt` module (>= 10), or BackendUnavailableError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError(install_message()) from None
    if version_tuple(getattr(trt, "__version__", "0"))[:1] < (10,):
        raise BackendUnavailableError(f"TensorRT {trt.__version__} is installed but loftup needs TensorRT 10: pip install -U 'tensorrt>=10,<11'")
    return trt


def gpu_info() -> dict[str, Any]:
    """Name and compute capability of the current CUDA GPU; BackendUnavailableError without one."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs an NVIDIA GPU with a CUDA driver and none is visible here; export --format onnx instead")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda}


def require_tensorrt() -> tuple[Any, dict[str, Any]]:
    """Fail fast, before any export work: TensorRT importable and a GPU present."""
    return import_tensorrt(), gpu_info()


@dataclass
class _Stream:
    handle: int
    torch_stream: Any = None

    def synchronize(self) -> None:
        if self.torch_stream is not None:
            self.torch_stream.synchronize()


def cuda_device():
    """(torch device, stream) for running plans: the current CUDA device and a fresh stream
    that first waits for work already queued on the current stream."""
    import torch

    gpu_info()
    device = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return device, _Stream(handle=stream.cuda_stream, torch_stream=stream)


# ------------------------------------------------------------------------------------------
# graph checks
def _load_onnx(path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def unsupported_ops(path_or_proto, tensorrt_version: str | None = None) -> list[str]:
    """Op types of the graph TensorRT 10 (or `tensorrt_version`) cannot parse, sorted."""
    proto = path_or_proto if hasattr(path_or_proto, "graph") else _load_onnx(path_or_proto)
    allowed = set(TENSORRT10_OPS)
    if tensorrt_version is None or version_tuple(tensorrt_version)[:2] >= ATTENTION_OP_MIN_TENSORRT:
        allowed.add("Attention")
    bad = {n.op_type for n in proto.graph.node if n.op_type not in allowed or n.domain not in ("", "ai.onnx")}
    constants = {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    for n in proto.graph.node:  # TensorRT needs constant reduction / squeeze axes
        if n.op_type in CONSTANT_AXES_OPS and len(n.input) > 1 and n.input[1] and n.input[1] not in constants:
            bad.add(f"{n.op_type} (non-constant axes)")
    return sorted(bad)


def check_tensorrt_graph(path, tensorrt_version: str | None = None) -> None:
    bad = unsupported_ops(path, tensorrt_version)
    if bad:
        hint = " (the Attention op needs TensorRT >= 10.14: export with --opset 20 for older versions)" if "Attention" in bad else ""
        raise ConfigError(f"the ONNX graph uses ops TensorRT {tensorrt_version or '10'} cannot parse: {', '.join(bad)}{hint}")


def float32_nodes(path_or_proto) -> set[str]:
    """Names of the float nodes that feed a Sin/Cos (the Fourier features), stopping at Shape
    (sizes do not depend on precision): these must run in float32 under FP16/BF16."""
    proto = path_or_proto if hasattr(path_or_proto, "graph") else _load_onnx(path_or_proto)
    producer = {out: node for node in proto.graph.node for out in node.output}
    keep: set[str] = set()
    stack = [n for n in proto.graph.node if n.op_type in ("Sin", "Cos")]
    while stack:
        node = stack.pop()
        if node.name in keep or node.op_type == "Shape":
            continue
        keep.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return keep


# ------------------------------------------------------------------------------------------
# builder
def profiles_from_shapes(input_shapes: dict[str, dict[str, list[int]]], extra_opt: list[dict[str, list[int]]] | None = None) -> list[dict[str, tuple]]:
    """One profile {name: (min, opt, max)} from metadata input ranges, plus one per extra opt."""
    base = {name: (tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for name, r in input_shapes.items()}
    profiles = [base]
    for opt in extra_opt or []:
        profiles.append({name: (mn, tuple(opt.get(name, o)), mx) for name, (mn, o, mx) in base.items()})
    return profiles


def _pin_float32(trt, network, names: set[str]) -> int:
    floats = {trt.DataType.FLOAT, trt.DataType.HALF, getattr(trt.DataType, "BF16", trt.DataType.FLOAT)}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name not in names and not any(layer.name.startswith(n + "_") for n in names):
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outs or any(o.dtype not in floats for o in outs):
            continue  # integer / bool layers have no precision to pin
        layer.precision = trt.DataType.FLOAT
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.DataType.FLOAT)
        pinned += 1
    return pinned


def _atomic_bytes(path: Path, data: bytes) -> None:
    from ..io import atomic_write

    atomic_write(path, lambda p: p.write_bytes(data))


def sidecar_path(plan: str | Path) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def companion_files(plan: str | Path) -> list[Path]:
    """Files that travel with a plan: its metadata sidecar."""
    return [sidecar_path(plan)]


def build_plan(onnx_path: str | Path, plan_path: str | Path, metadata: EngineMetadata, *, precision: str = "fp32",
               workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: str | Path | None = None,
               profiles: list[dict[str, tuple]] | None = None) -> EngineMetadata:
    """Build a TensorRT plan from an exported ONNX file; write the plan and its JSON sidecar.

    profiles: [{input name: (min, opt, max)}, ...]; default one profile from the metadata's
    input ranges. Returns the plan's metadata (format "trt", runtime = build info).
    """
    import hashlib

    trt, gpu = require_tensorrt()
    check_tensorrt_graph(onnx_path, trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["unknown error"]
        raise ConfigError(f"TensorRT could not parse {Path(onnx_path).name}: {errors[0][:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    flags = []
    if precision in ("fp16", "bf16"):
        flag = trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16
        config.set_flag(flag)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        flags = [precision.upper(), "OBEY_PRECISION_CONSTRAINTS"]
        _pin_float32(trt, network, float32_nodes(onnx_path))
    profiles = profiles or profiles_from_shapes(metadata.input_shapes)
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for prof in profiles:
        missing = inputs - set(prof)
        if missing:
            raise ConfigError(f"optimization profile lacks input(s) {sorted(missing)}")
        p = builder.create_optimization_profile()
        for name, (mn, opt, mx) in prof.items():
            if not all(a <= b <= c for a, b, c in zip(mn, opt, mx)):
                raise ConfigError(f"profile for {name} needs min <= opt <= max per axis, got {mn}, {opt}, {mx}")
            p.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
        config.add_optimization_profile(p)
    cache_file = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        cache = config.create_timing_cache(b"")  # a cache from another TensorRT/GPU: start afresh
        config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError("TensorRT could not build the engine (see the TensorRT log above); try a larger --workspace-mb or --precision fp32")
    data = bytes(serialized)
    plan_path = Path(plan_path)
    _atomic_bytes(plan_path, data)
    if cache_file:
        _atomic_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    md = EngineMetadata(**{**metadata.to_dict(), "format": "trt", "precision": precision})
    md.runtime = {
        "tensorrt": trt.__version__,
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "cuda": gpu.get("cuda"),
        "flags": flags,
        "workspace_mb": int(workspace_mb),
        "profiles": [{k: [list(s) for s in v] for k, v in prof.items()} for prof in profiles],
        "timing_cache": str(cache_file) if cache_file else None,
        "plan_sha256": hashlib.sha256(data).hexdigest(),
    }
    write_sidecar(plan_path, md)
    return md


def write_sidecar(plan_path: str | Path, md: EngineMetadata) -> None:
    from ..io import atomic_write

    atomic_write(sidecar_path(plan_path), lambda p: p.write_text(md.to_json()))


def read_sidecar(plan_path: str | Path) -> EngineMetadata:
    side = sidecar_path(plan_path)
    if not side.is_file():
        raise CheckpointError(
            f"{Path(plan_path).name} has no metadata sidecar {side.name}; keep the .plan.json next to the plan "
            "or build it again with `loftup export --format trt`"
        )
    try:
        data = json.loads(side.read_text())
    except ValueError:
        raise CheckpointError(f"{side.name} is not valid JSON; build the engine again with `loftup export --format trt`") from None
    return EngineMetadata.from_dict(data, source=str(side))


# ------------------------------------------------------------------------------------------
# runtime
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64"}


class TensorRTEngine(Engine):
    """A `.plan` built by `build_plan`, run with TensorRT on the current CUDA device."""

    name = "tensorrt"

    def __init__(self, path: str | Path):
        import hashlib

        import torch

        self.path = Path(path)
        self.metadata = read_sidecar(self.path)
        data = self.path.read_bytes()
        want = self.metadata.runtime.get("plan_sha256")
        if want and hashlib.sha256(data).hexdigest() != want:
            raise CheckpointError(f"{self.path.name} does not match its sidecar (sha256 differs): the plan is damaged or was replaced; build it again")
        trt = import_tensorrt()
        built = self.metadata.runtime.get("tensorrt")
        if built and built != trt.__version__:
            raise CheckpointError(
                f"{self.path.name} was built with TensorRT {built} but TensorRT {trt.__version__} is installed; "
                f"plans only run on the version that built them: rebuild with `loftup export --format trt` (or install tensorrt=={built})"
            )
        self.device, self.stream = cuda_device()
        gpu = gpu_info()
        cc = self.metadata.runtime.get("compute_capability")
        if cc and cc != gpu["compute_capability"]:
            raise CheckpointError(
                f"{self.path.name} was built for GPU compute capability {cc} ({self.metadata.runtime.get('gpu')}) but this GPU is "
                f"{gpu['compute_capability']} ({gpu['name']}); rebuild it on this GPU"
            )
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise CheckpointError(f"TensorRT cannot deserialize {self.path.name}: the plan is damaged or not a TensorRT {trt.__version__} plan; build it again")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if set(self.inputs) != set(self.metadata.input_names) or self.outputs != [OUTPUT_NAME]:
            raise CheckpointError(f"{self.path.name} has inputs {self.inputs} / outputs {self.outputs}, not what its sidecar describes; build it again")
        self.dtypes = {n: getattr(torch, _TORCH_DTYPES.get(self.engine.get_tensor_dtype(n).name, "float32")) for n in names}
        self.profiles = [
            {n: tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(n, k)) for n in self.inputs}
            for k in range(self.engine.num_optimization_profiles)
        ]
        self.active_profile = 0

    def _profile_for(self, shapes: dict[str, tuple[int, ...]]) -> int:
        fits = []
        for k, prof in enumerate(self.profiles):
            if all(all(lo <= s <= hi for s, lo, hi in zip(shapes[n], prof[n][0], prof[n][2])) for n in shapes):
                dist = sum(abs(s - o) for n in shapes for s, o in zip(shapes[n], prof[n][1]))
                fits.append((dist, k))
        if not fits:
            ranges = "; ".join(f"profile {k}: " + ", ".join(f"{n} {list(p[n][0])}..{list(p[n][2])}" for n in p) for k, p in enumerate(self.profiles))
            raise InputError(
                f"input shapes {shapes} are outside every optimization profile of {self.path.name} ({ranges}); "
                "resize the input or rebuild with other --min-size/--max-size"
            )
        return min(fits)[1]

    def _run(self, inputs):
        import torch

        shapes = {n: tuple(x.shape) for n, x in zip(self.metadata.input_names, inputs)}
        k = self._profile_for(shapes)
        if k != self.active_profile:
            if not self.context.set_optimization_profile_async(k, self.stream.handle):
                raise InputError(f"TensorRT refused optimization profile {k}")
            self.active_profile = k
        bound = []
        for name, x in zip(self.metadata.input_names, inputs):
            x = x.detach().to(self.device, self.dtypes[name]).contiguous()
            bound.append(x)  # keep alive until the stream is done
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise InputError(f"TensorRT refused shape {tuple(x.shape)} for {name} (profile {k} allows {self.profiles[k][name][0]}..{self.profiles[k][name][2]})")
            self.context.set_tensor_address(name, x.data_ptr())
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(OUTPUT_NAME))
        out = torch.empty(out_shape, dtype=self.dtypes[OUTPUT_NAME], device=self.device)
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"TensorRT failed to run {self.path.name} (see the TensorRT log)")
        self.stream.synchronize()
        del bound
        return out  # float32 for every export; Engine checks it once

    def describe(self) -> str:
        rt = self.metadata.runtime
        return super().describe() + f" [TensorRT {rt.get('tensorrt')}, {rt.get('gpu')}]"
