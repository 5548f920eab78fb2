"""File I/O shared by every part of loftup: atomic writes, hashes, reading tensors safely.

Pickled checkpoints are only read with `torch.load(weights_only=True)`; TorchScript archives
(OpenAI's CLIP download) through `torch.jit.load`, keeping only their tensors.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import torch

from .errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model")  # Lightning / training-script wrappers around a state dict


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_path) then rename tmp_path to path; nothing is left behind on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a checkpoint file (.safetensors, weights-only pickle, TorchScript).

    Unwraps a top-level {"state_dict": ...} or {"model": ...}; CheckpointError says which file
    could not be read and why.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; give the path of a .bin/.pth/.ckpt/.safetensors file")
    meta: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                obj = {k: f.get_tensor(k) for k in f.keys()}
        elif _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
                obj = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # each reader raises its own types for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"cannot read checkpoint {path}: {first} - the file is damaged, truncated or not a checkpoint; get it again"
        ) from None
    for wrapper in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:3]}")
    return obj, meta


def state_dict_mismatch(model: torch.nn.Module, sd: dict[str, torch.Tensor], optional=("num_batches_tracked",)) -> str:
    """'' if `sd` fits `model` exactly, else a summary of missing / unexpected keys and shape mismatches.

    Keys ending in one of `optional` may be missing (older BatchNorm checkpoints lack the counter).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd and not k.endswith(tuple(optional))]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {expected[k]}" for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    return "; ".join(problems)
