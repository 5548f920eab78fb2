"""Read the weights of a TorchScript archive (OpenAI's CLIP download) without running any of it.

`torch.jit.load` compiles the archive's code and calls each module's scripted `__setstate__`,
which can do anything TorchScript can (write files, for one). So loftup never hands an
archive to it. Instead, `read_torchscript_weights` reads the zip as data:

- `code/**.py` is only *searched as text* (regular expressions, never parsed into anything
  that runs) for each class's `__parameters__` / `__buffers__` lists, the names that make up
  its state dict. An archive whose classes define their own `__setstate__`/`__getstate__` is
  refused: its state layout is whatever that code says, so it is not readable as weights.
- `data.pkl` (the module tree) is unpickled by `_InertUnpickler`: every `__torch__.*` class
  becomes an inert `ScriptObjectRecord` that only keeps its BUILD state; the only callables
  the pickle may reach are the tensor-rebuild function, `OrderedDict` and TorchScript's
  list/tag helpers (all replaced by our own plain versions); INST/OBJ/EXT opcodes and BUILD on
  anything but a record are refused. No import, no attribute lookup by name, no code.
- tensor storages are read from the zip's `data/` entries by `persistent_load` and checked
  against the declared sizes. `constants.pkl` and the code's debug pickles are never opened.

The result is the same as `torch.jit.load(path).state_dict()` for ordinary modules (scripted
or traced), which tests/backbones/test_clip.py and tests/test_security.py check.
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CheckpointError

MAX_PICKLE_BYTES = 64 << 20  # the module tree; tensor data lives in separate entries
MAX_CODE_BYTES = 16 << 20  # per code file
MAX_DEPTH = 256  # module nesting

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16, "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "ByteStorage": torch.uint8, "CharStorage": torch.int8, "ShortStorage": torch.int16, "IntStorage": torch.int32,
    "LongStorage": torch.int64, "BoolStorage": torch.bool,
}


def is_torchscript_archive(names: list[str]) -> bool:
    """True for the member list of a TorchScript zip (it has code/ or constants.pkl; torch.save's has neither)."""
    return any(re.fullmatch(r"[^/]+/(constants\.pkl|code/.+)", n) for n in names)


@dataclass
class ScriptObjectRecord:
    """What a `__torch__.*` object in data.pkl becomes: its class name and its BUILD state, nothing more."""

    qualname: str
    state: Any = None

    def __setstate__(self, state: Any) -> None:  # called by our BUILD only; records, never interprets
        self.state = state


@dataclass
class _ClassInfo:
    is_module: bool
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    custom_state: bool = False


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _record_class(qualname: str):
    return type("ScriptObject", (ScriptObjectRecord,), {"_qualname": qualname})


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """Our stand-in for torch._utils._rebuild_tensor_v2: a strided view of a storage we read."""
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor refers to something that is not a storage")
    if not (isinstance(offset, int) and all(isinstance(v, int) for v in (*size, *stride))):
        raise pickle.UnpicklingError("a tensor has a non-integer size, stride or offset")
    view = storage.as_strided(tuple(size), tuple(stride), offset)  # bounds-checked by torch
    if view.numel() > storage.numel():  # overlapping strides: a weight never has them, a memory bomb does
        raise pickle.UnpicklingError(f"a tensor of shape {tuple(size)} overlaps itself in its storage")
    return view


def _restore_type_tag(value, type_str=None):
    return value


def _as_list(*args):
    return list(args[0]) if args else []


# The only callables data.pkl may reach, by (module, name).
_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    **{("torch.jit._pickle", f"build_{kind}list"): _as_list for kind in ("int", "double", "bool", "tensor", "generic")},
}


class _InertUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcode table can be narrowed
    def __init__(self, file, archive: zipfile.ZipFile, root: str, archive_size: int):
        super().__init__(file)
        self._zip, self._root, self._archive_size = archive, root, archive_size
        self._storages: dict[str, torch.Tensor] = {}
        self._bytes_read = 0
        self._records: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._records:
                self._records[qualname] = _record_class(qualname)
            return self._records[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[(module, name)]
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which plain weights never need")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:60]}")
        _, kind, key, _location, numel = pid
        key = str(key)
        if key in self._storages:
            return self._storages[key]
        if not re.fullmatch(r"\w+", key) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"bad storage reference {key!r}")
        try:
            info = self._zip.getinfo(f"{self._root}/data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage data/{key} is missing") from None
        nbytes = numel * torch.empty((), dtype=kind.dtype).element_size()
        if info.file_size < nbytes or info.file_size > self._archive_size:
            raise pickle.UnpicklingError(f"storage data/{key} holds {info.file_size} bytes, not {nbytes}")
        self._bytes_read += info.file_size
        if self._bytes_read > self._archive_size:  # entries that overlap inside the zip
            raise pickle.UnpicklingError("its storages add up to more bytes than the file holds")
        raw = bytearray(self._zip.read(info)[:nbytes])
        storage = torch.frombuffer(raw, dtype=kind.dtype) if nbytes else torch.empty(0, dtype=kind.dtype)
        self._storages[key] = storage
        return storage

    # -- the opcodes that could call or build arbitrary objects -----------------------------
    dispatch = dict(pickle._Unpickler.dispatch)

    def _refuse(self):
        raise pickle.UnpicklingError("it uses a pickle opcode that plain weights never need")

    for _op in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.NEWOBJ_EX):
        dispatch[_op[0]] = _refuse

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        record = isinstance(func, type) and issubclass(func, ScriptObjectRecord)
        if not (record or any(func is f for f in _FUNCTIONS.values())) or not isinstance(args, tuple):
            raise pickle.UnpicklingError("it calls something that plain weights never need")
        self.stack[-1] = func(func._qualname) if record else func(*args)

    def _load_newobj(self):
        self.stack.pop()  # constructor arguments: records take none
        cls = self.stack.pop()
        if isinstance(cls, type) and issubclass(cls, ScriptObjectRecord):
            self.append(cls(cls._qualname))
        elif cls is collections.OrderedDict:
            self.append(collections.OrderedDict())
        else:
            raise pickle.UnpicklingError("it builds an object that plain weights never need")

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, ScriptObjectRecord):
            raise pickle.UnpicklingError(f"it sets the state of a {type(inst).__name__}, which plain weights never do")
        inst.__setstate__(state)

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.BUILD[0]] = _load_build
    del _op


# -- the class table, from the archive's code as text ------------------------------------------
_CLASS_RE = re.compile(r"^class (\w+)(?:\((\w*)\))?:[^\n]*\n((?:[ \t]+[^\n]*\n|[ \t]*\n)*)", re.M)
_LIST_RE = r"^[ \t]+{}[ \t]*=[ \t]*\[([^\]\n]*)\]"


def _class_table(archive: zipfile.ZipFile, root: str, archive_size: int) -> dict[str, _ClassInfo]:
    """{qualified class name: _ClassInfo} for every class in the archive's code/ files."""
    table: dict[str, _ClassInfo] = {}
    prefix = f"{root}/code/"
    for info in archive.infolist():
        if not (info.filename.startswith(prefix) and info.filename.endswith(".py")):
            continue
        if info.file_size > min(MAX_CODE_BYTES, archive_size):
            raise CheckpointError(f"code file {info.filename} is implausibly large")
        module = info.filename[len(prefix) : -3].replace("/", ".")
        text = archive.read(info).decode("utf-8", errors="replace") + "\n"
        for m in _CLASS_RE.finditer(text):
            name, base, body = m.groups()
            lists = {}
            for attr in ("__parameters__", "__buffers__"):
                found = re.search(_LIST_RE.format(attr), body, re.M)
                lists[attr] = re.findall(r"\"([^\"]*)\"", found.group(1)) if found else []
            custom = re.search(r"^[ \t]+def (__setstate__|__getstate__)\b", body, re.M) is not None
            table[f"{module}.{name}"] = _ClassInfo(base == "Module", lists["__parameters__"], lists["__buffers__"], custom)
    return table


def _collect(obj: ScriptObjectRecord, table: dict[str, _ClassInfo], prefix: str, out: dict[str, torch.Tensor],
             active: set[int], depth: int) -> None:
    """state_dict entries of one module record (parameters, buffers, then submodules), like nn.Module."""
    if depth > MAX_DEPTH or id(obj) in active:
        raise CheckpointError("the module tree is cyclic or nested implausibly deep")
    info = table.get(obj.qualname)
    if info is not None and info.custom_state:
        raise CheckpointError(
            f"class {obj.qualname.removeprefix('__torch__.')} defines its own __setstate__/__getstate__, so its weights "
            "cannot be read without running its code; loftup never runs it - convert the file yourself if you trust it (docs/security.md)"
        )
    state = obj.state
    if not isinstance(state, dict):
        raise CheckpointError(f"module {prefix.rstrip('.') or '(root)'} has no attribute table; this is not a plain TorchScript module")
    active.add(id(obj))
    names = (info.parameters + info.buffers) if info is not None else [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    for name in names:
        value = state.get(name)
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
    for name, value in state.items():
        if isinstance(value, ScriptObjectRecord):
            child = table.get(value.qualname)
            if child is None or child.is_module:
                _collect(value, table, f"{prefix}{name}.", out, active, depth + 1)
    active.discard(id(obj))


def read_torchscript_weights(archive: zipfile.ZipFile, archive_size: int) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive's top module, read as data (see the module docstring).

    Raises CheckpointError, or pickle.UnpicklingError / zipfile / torch errors for damaged
    files (loftup.io.read_tensors turns those into one CheckpointError line).
    """
    roots = {n.split("/", 1)[0] for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)}
    if len(roots) != 1:
        raise CheckpointError("a TorchScript archive needs exactly one data.pkl")
    root = roots.pop()
    byteorder = f"{root}/byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
        raise CheckpointError("the archive stores big-endian tensors, which loftup does not read")
    table = _class_table(archive, root, archive_size)
    info = archive.getinfo(f"{root}/data.pkl")
    if info.file_size > min(MAX_PICKLE_BYTES, archive_size):
        raise CheckpointError("its data.pkl is implausibly large")
    import io

    top = _InertUnpickler(io.BytesIO(archive.read(info)), archive, root, archive_size).load()
    if not isinstance(top, ScriptObjectRecord):
        raise CheckpointError("its data.pkl does not hold a module")
    out: dict[str, torch.Tensor] = {}
    _collect(top, table, "", out, set(), 0)
    return out
