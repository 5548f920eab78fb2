"""A stand-in for the `tensorrt` package (TensorRT 10 Python API), for machines without a GPU.

It records every call in `CALLS` and rejects what the real library would reject (profiles with
min > opt > max, missing profiles for dynamic inputs, shapes outside the active profile,
unbound tensors, plans from another version). Plans it "builds" are the ONNX bytes behind a
header; its execution context runs them with ONNX Runtime, reading the inputs from - and
writing the output to - the raw addresses the caller bound with `set_tensor_address`, so a
binding mistake gives wrong numbers, not a passing test.

Precision is honoured: a plan built with the FP16 or BF16 flag runs every layer that was not
pinned to float32 (`layer.precision = FLOAT`) in that precision - its float inputs (weights,
activations) are rounded to fp16 / bf16 before it and a float graph output it produces is
rounded after it (`reduced_precision_graph`). Inside a layer the arithmetic stays float32,
as TensorRT's fp16 / bf16 kernels accumulate in float32. This is the strictest reading of the
flag (the real builder may still keep some layers in float32 when that is faster), so a
reduced-precision engine that passes parity here has had every unpinned layer in half precision.

Install with `monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)`.
"""

from __future__ import annotations

import ctypes
import enum
import json

import numpy as np

__version__ = "10.15.1"
PLAN_MAGIC = b"FAKETRTPLAN\n"
CACHE_MAGIC = b"FAKETRTCACHE\n"
CALLS: list[tuple] = []  # (what, details...) in call order
BUILDS: list[dict] = []  # one summary per build_serialized_network call


def reset() -> None:
    CALLS.clear()
    BUILDS.clear()


def _call(*what) -> None:
    CALLS.append(what)


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, severity=WARNING):
        self.severity = severity


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    BF16 = 7
    INT64 = 8


float32, float16, bfloat16, int32, int64 = DataType.FLOAT, DataType.HALF, DataType.BF16, DataType.INT32, DataType.INT64

_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16, 6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL, 3: DataType.INT8}
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64}


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    TF32 = 6
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10
    BF16 = 17


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class HostMemory:
    def __init__(self, data: bytes):
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


# -- network ----------------------------------------------------------------------------------
class Tensor:
    def __init__(self, name: str, dtype: DataType, shape=()):
        self.name, self.dtype, self.shape = name, dtype, tuple(shape)


class Layer:
    def __init__(self, name: str, op_type: str, outputs: list[Tensor]):
        self.name, self.type, self._outputs = name, op_type, outputs
        self._precision = None
        self.output_types: dict[int, DataType] = {}

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, i: int) -> Tensor:
        return self._outputs[i]

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value):
        assert isinstance(value, DataType), f"layer precision must be a DataType, got {value!r}"
        _call("layer.precision", self.name, value)
        self._precision = value

    @property
    def precision_is_set(self) -> bool:
        return self._precision is not None

    def set_output_type(self, index: int, dtype) -> None:
        assert isinstance(dtype, DataType)
        assert 0 <= index < self.num_outputs
        _call("layer.set_output_type", self.name, index, dtype)
        self.output_types[index] = dtype


class NetworkDefinition:
    def __init__(self, flags: int):
        self.flags = flags
        self.layers: list[Layer] = []
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.onnx_bytes = b""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, i: int) -> Tensor:
        return self.outputs[i]


class ParserError:
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


class OnnxParser:
    def __init__(self, network: NetworkDefinition, logger: Logger):
        self.network = network
        self.errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> ParserError:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        import onnx

        _call("parser.parse_from_file", path)
        try:
            with open(path, "rb") as f:
                data = f.read()
            model = onnx.load_from_string(data)
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as e:
            self.errors.append(ParserError(f"ModelImporter: failed to parse the ONNX file ({type(e).__name__})"))
            return False
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
        types.update({t.name: t.data_type for t in model.graph.initializer})
        net = self.network
        net.onnx_bytes = data

        def dims(value):
            return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)

        init = {t.name for t in model.graph.initializer}
        net.inputs = [Tensor(v.name, _ONNX_TO_TRT[v.type.tensor_type.elem_type], dims(v)) for v in model.graph.input if v.name not in init]
        net.outputs = [Tensor(v.name, _ONNX_TO_TRT[v.type.tensor_type.elem_type], dims(v)) for v in model.graph.output]
        for node in model.graph.node:
            outs = [Tensor(o, _ONNX_TO_TRT.get(types.get(o, 1), DataType.FLOAT)) for o in node.output]
            net.layers.append(Layer(node.name, node.op_type, outs))
        return True


# -- builder ----------------------------------------------------------------------------------
class OptimizationProfile:
    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, min, opt, max) -> None:
        mn, op, mx = tuple(min), tuple(opt), tuple(max)
        if not (len(mn) == len(op) == len(mx)) or not all(a <= b <= c for a, b, c in zip(mn, op, mx)):
            raise ValueError(f"invalid profile for {name}: {mn} {op} {mx}")
        _call("profile.set_shape", name, mn, op, mx)
        self.shapes[name] = (mn, op, mx)


class TimingCache:
    def __init__(self, entries: dict):
        self.entries = dict(entries)

    def serialize(self) -> HostMemory:
        return HostMemory(CACHE_MAGIC + json.dumps({"version": __version__, "entries": self.entries}).encode())

    def combine(self, other: "TimingCache", ignore_mismatch: bool) -> bool:
        self.entries.update(other.entries)
        return True

    def reset(self) -> bool:
        self.entries.clear()
        return True


class BuilderConfig:
    def __init__(self):
        self.flags: set[BuilderFlag] = set()
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[OptimizationProfile] = []
        self.timing_cache: TimingCache | None = None
        self.cache_loaded_entries = 0

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        assert isinstance(pool, MemoryPoolType) and size > 0
        _call("config.set_memory_pool_limit", pool, size)
        self.pools[pool] = int(size)

    def set_flag(self, flag: BuilderFlag) -> None:
        assert isinstance(flag, BuilderFlag)
        _call("config.set_flag", flag)
        self.flags.add(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        _call("config.add_optimization_profile", dict(profile.shapes))
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        data = bytes(data)
        _call("config.create_timing_cache", len(data))
        if not data:
            return TimingCache({})
        if not data.startswith(CACHE_MAGIC):
            return TimingCache({"__corrupt__": True})
        payload = json.loads(data[len(CACHE_MAGIC):])
        cache = TimingCache(payload["entries"])
        cache.version = payload["version"]
        return cache

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        _call("config.set_timing_cache", len(cache.entries), ignore_mismatch)
        if "__corrupt__" in cache.entries or getattr(cache, "version", __version__) != __version__ and not ignore_mismatch:
            return False
        self.timing_cache = cache
        self.cache_loaded_entries = len(cache.entries)
        return True

    def get_timing_cache(self) -> TimingCache:
        return self.timing_cache


class Builder:
    def __init__(self, logger: Logger):
        self.logger = logger

    def create_network(self, flags: int = 0) -> NetworkDefinition:
        _call("builder.create_network", flags)
        return NetworkDefinition(flags)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: NetworkDefinition, config: BuilderConfig):
        _call("builder.build_serialized_network")
        dynamic = [t for t in network.inputs if -1 in t.shape]
        if dynamic and not config.profiles:
            return None  # the real builder errors: dynamic inputs need a profile
        for prof in config.profiles:
            for t in network.inputs:
                if t.name not in prof.shapes:
                    return None
                for shape in prof.shapes[t.name]:
                    if len(shape) != len(t.shape) or any(d != -1 and d != s for d, s in zip(t.shape, shape)):
                        return None  # a profile that contradicts a static dimension
        if MemoryPoolType.WORKSPACE not in config.pools:
            return None  # we always set one; the fake insists
        if config.timing_cache is None:
            config.timing_cache = TimingCache({})
        hits = sum(1 for layer in network.layers if layer.type in config.timing_cache.entries)
        for layer in network.layers:  # "time" each distinct layer type once
            config.timing_cache.entries.setdefault(layer.type, 1.0)
        header = {
            "version": __version__,
            "flags": sorted(f.name for f in config.flags),
            "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network.inputs],
            "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network.outputs],
            "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
        }
        reduced = [f for f in (BuilderFlag.FP16, BuilderFlag.BF16) if f in config.flags]
        if reduced:  # the layers that run in reduced precision: all but those pinned to float32
            header["reduced"] = "HALF" if reduced[0] == BuilderFlag.FP16 else "BF16"
            header["float32_layers"] = sorted(layer.name for layer in network.layers if layer.precision == DataType.FLOAT)
        BUILDS.append({
            "flags": set(config.flags), "workspace": config.pools[MemoryPoolType.WORKSPACE], "profiles": header["profiles"],
            "cache_entries_loaded": config.cache_loaded_entries, "cache_hits": hits,
            "float32_layers": {layer.name for layer in network.layers if layer.precision == DataType.FLOAT},
            "sin_cos_layers": {layer.name for layer in network.layers if layer.type in ("Sin", "Cos")},
            "output_types": {layer.name: dict(layer.output_types) for layer in network.layers if layer.output_types},
        })
        return HostMemory(PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx_bytes)


# -- reduced precision ------------------------------------------------------------------------
def reduced_precision_graph(onnx_bytes: bytes, dtype: str, float32_layers: set[str]) -> bytes:
    """The ONNX graph with every float tensor that enters an unpinned node, and every float graph
    output an unpinned node produces, rounded to fp16 (dtype "HALF") or bf16 ("BF16") by a
    Cast(to reduced) -> Cast(to float) pair; nodes in `float32_layers` see float32 values."""
    import onnx
    from onnx import TensorProto, helper

    FLOAT = TensorProto.FLOAT
    low = {"HALF": TensorProto.FLOAT16, "BF16": TensorProto.BFLOAT16}[dtype]
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    nodes, rounded = [], {}

    def round_trip(name: str, out: str) -> None:
        nodes.append(helper.make_node("Cast", [name], [out + "__low"], name=out + "__to_low", to=low))
        nodes.append(helper.make_node("Cast", [out + "__low"], [out], name=out + "__to_float", to=FLOAT))

    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == FLOAT}
    for node in graph.node:
        unpinned = node.name not in float32_layers
        if unpinned:
            for i, name in enumerate(node.input):
                if name and types.get(name) == FLOAT:
                    if name not in rounded:
                        rounded[name] = name + "__rounded"
                        round_trip(name, rounded[name])
                    node.input[i] = rounded[name]
        finals = [o for o in node.output if o in outputs] if unpinned else []
        for i, name in enumerate(node.output):
            if name in finals:
                node.output[i] = name + "__raw"
        nodes.append(node)
        for name in finals:
            round_trip(name + "__raw", name)
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


# -- runtime ----------------------------------------------------------------------------------
class Runtime:
    def __init__(self, logger: Logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data) -> "CudaEngine | None":
        data = bytes(data)
        _call("runtime.deserialize_cuda_engine", len(data))
        if not data.startswith(PLAN_MAGIC):
            return None
        try:
            header_raw, onnx_bytes = data[len(PLAN_MAGIC):].split(b"\n", 1)
            header = json.loads(header_raw)
        except ValueError:
            return None
        if header["version"] != __version__:
            return None  # the real runtime logs "serialization version mismatch" and returns None
        return CudaEngine(header, onnx_bytes)


class CudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes):
        import onnxruntime as ort

        self.header = header
        options = ort.SessionOptions()
        if header.get("reduced"):
            onnx_bytes = reduced_precision_graph(onnx_bytes, header["reduced"], set(header["float32_layers"]))
            # no graph rewrites: they could fold a Cast(to half) -> Cast(to float) pair away
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.io = [(n, DataType[d], tuple(s), TensorIOMode.INPUT) for n, d, s in header["inputs"]]
        self.io += [(n, DataType[d], tuple(s), TensorIOMode.OUTPUT) for n, d, s in header["outputs"]]

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def _find(self, name: str):
        for entry in self.io:
            if entry[0] == name:
                return entry
        raise KeyError(name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._find(name)[3]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._find(name)[1]

    def get_tensor_shape(self, name: str) -> tuple:
        return self._find(name)[2]

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.header["profiles"])

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        return [tuple(s) for s in self.header["profiles"][profile_index][name]]

    def create_execution_context(self) -> "ExecutionContext":
        return ExecutionContext(self)


class ExecutionContext:
    def __init__(self, engine: CudaEngine):
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        _call("context.set_optimization_profile_async", index, stream)
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.profile = index
        self.shapes.clear()
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(s) for s in shape)
        _call("context.set_input_shape", name, shape)
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return False
        lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        if len(shape) != len(lo) or not all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self.shapes.get(name, self.engine.get_tensor_shape(name))
        image = self.shapes.get("image")
        if image is None:
            return self.engine.get_tensor_shape(name)
        channels = self.engine.get_tensor_shape(name)[1]
        return (image[0], channels, image[2], image[3])

    def set_tensor_address(self, name: str, address: int) -> bool:
        _call("context.set_tensor_address", name, int(address))
        self.engine._find(name)
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        _call("context.execute_async_v3", stream_handle)
        inputs = [e for e in self.engine.io if e[3] == TensorIOMode.INPUT]
        outputs = [e for e in self.engine.io if e[3] == TensorIOMode.OUTPUT]
        if any(n not in self.shapes for n, *_ in inputs) or any(n not in self.addresses for n, *_ in self.engine.io):
            return False  # unset shapes or unbound tensors
        feed = {}
        for name, dtype, _, _ in inputs:
            shape = self.shapes[name]
            npdt = np.dtype(_NUMPY[dtype])
            nbytes = int(np.prod(shape)) * npdt.itemsize
            raw = (ctypes.c_char * nbytes).from_address(self.addresses[name])
            feed[name] = np.frombuffer(bytes(raw), dtype=npdt).reshape(shape)
        results = self.engine.session.run([n for n, *_ in outputs], feed)
        for (name, dtype, _, _), value in zip(outputs, results):
            value = np.ascontiguousarray(value.astype(_NUMPY[dtype]))
            if tuple(value.shape) != tuple(self.get_tensor_shape(name)):
                return False
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        self.executions += 1
        return True
