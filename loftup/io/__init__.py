"""File I/O shared by every part of loftup: atomic writes, hashes, reading tensors and images safely.

Loader policy (docs/security.md): nothing in a file a user hands us is ever run. A weights
file's format is judged by its bytes before any loader opens it; safetensors are read with
safetensors, torch.save files with `torch.load(weights_only=True)`, and TorchScript archives
(OpenAI's CLIP download) as plain data by loftup.io.torchscript - never by `torch.jit.load`.
Everything else is refused with one CheckpointError line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import CheckpointError, InputError

WRAPPER_KEYS = ("state_dict", "model")  # Lightning / training-script wrappers around a state dict


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_path) then rename tmp_path to path; nothing is left behind on failure.

    A failed write that is an OS error (also when a library reports it in its own type, as
    safetensors does) is raised as an OSError naming `path`, so the CLI can say which file
    could not be written and why (no space, permission, read-only).
    """
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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        error = write_error(exc, path)
        if error is None:
            raise
        raise error from None


LOW_SPACE_BYTES = 1 << 20


def write_error(exc: BaseException, path: Path) -> OSError | None:
    """`exc`, raised while writing `path`, as an OSError naming `path`; None if it is no OS error.

    OSErrors keep their errno; other types count when their message carries the OS error code
    (Rust's "(os error 28)", safetensors) or when the file system has no space left (torch.save's
    "file write failed" names no cause).
    """
    if not isinstance(exc, Exception):
        return None  # Ctrl-C, SystemExit: as they are
    if isinstance(exc, OSError):
        code = exc.errno
    else:
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
        if code is None and _free_bytes(path.parent) < LOW_SPACE_BYTES:
            code = errno.ENOSPC
    if code is None:
        return None
    return OSError(code, os.strerror(code), str(path))


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return LOW_SPACE_BYTES
    return st.f_bavail * st.f_frsize


def refuse_existing(paths, where: str = "--out") -> None:
    """ConfigError (one line) when any of `paths` exists: no verb overwrites a file it did not write
    in this run unless its --force is given (docs/outputs.md)."""
    from ..errors import ConfigError

    taken = [Path(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise ConfigError(f"{taken[0]} already exists{more}; pass --force to overwrite, or choose another {where}")


@contextlib.contextmanager
def created_folder(folder: str | Path):
    """Around a verb's work: when it fails, `folder` is removed if this run created it and left
    nothing in it but empty folders (no leftovers from a run that wrote nothing)."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir():
            _remove_empty_tree(folder)
        raise


def _remove_empty_tree(folder: Path) -> None:
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only succeeds when empty
    with contextlib.suppress(OSError):
        folder.rmdir()


def cache_dir() -> Path:
    """loftup's cache folder: `$LOFTUP_CACHE` if set, else `~/.cache/loftup`."""
    env = os.environ.get("LOFTUP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "loftup"


def check_writable_dir(folder: str | Path, what: str = "--out") -> None:
    """InputError (one line) unless `folder` is, or can be created as, a folder we can write files in.

    Checked before any work starts, by creating and removing a probe file in the nearest existing
    folder (permission bits alone mislead: root ignores them, a read-only mount does not).
    Creates nothing that stays.
    """
    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"cannot write to {folder}: {probe} is a file, not a folder; choose another {what}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".loftup-write-check.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {probe} is not writable ({exc.strerror}); choose another {what}") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


SAFETENSORS = "safetensors"
TORCH_ZIP = "torch.save zip"
TORCH_PICKLE = "torch.save pickle"
TORCHSCRIPT = "TorchScript archive"
CONVERT_HINT = "if you trust the file, convert it to safetensors yourself (docs/security.md)"


def _one_line(text: str, limit: int = 160) -> str:
    """The first non-empty line of `text`, shortened; '' if there is none."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "").rstrip(".;:, ")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def checkpoint_format(path: str | Path, what: str = "checkpoint") -> str:
    """What a weights file is, judged by its bytes (never by its suffix) before any loader opens it.

    One of SAFETENSORS, TORCH_ZIP, TORCH_PICKLE or TORCHSCRIPT; CheckpointError for anything else
    (ONNX, TensorRT plans, random bytes, zips that are not PyTorch's, empty files).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return SAFETENSORS
        if head[8:9] == b"{" and n < 1 << 32:
            raise CheckpointError(
                f"cannot read {what} {path}: a truncated safetensors file (header of {n} bytes, file of {size}); the file is damaged - get it again"
            )
    if head[:4] == b"PK\x03\x04":
        from .torchscript import is_torchscript_archive

        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except Exception as exc:  # BadZipFile, NotImplementedError, ... on damaged archives
            raise CheckpointError(
                f"cannot read {what} {path}: damaged zip archive ({_one_line(exc) or type(exc).__name__}); the file is damaged or truncated - get it again"
            ) from None
        if is_torchscript_archive(names):
            return TORCHSCRIPT
        if any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in names):
            return TORCH_ZIP
        raise CheckpointError(f"cannot read {what} {path}: a zip archive that is not a PyTorch checkpoint (no data.pkl)")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return TORCH_PICKLE  # legacy (pre-1.6) torch.save files are a plain pickle stream
    raise CheckpointError(
        f"cannot read {what} {path}: it is not a safetensors, PyTorch or TorchScript file "
        f"({'empty' if not size else 'unknown content'}); give a .safetensors/.bin/.pth/.ckpt weights file"
    )


def load_weights_only(path: str | Path, what: str = "checkpoint", allow: Sequence[type] = ()) -> Any:
    """torch.load(weights_only=True) of a torch.save file, after checking by content that it is one.

    TorchScript archives and anything else are refused before torch opens the file; every
    failure is one CheckpointError line that says what to do (never "set weights_only=False").
    allow: extra plain-data classes the pickle may name (e.g. RADIO's argparse.Namespace), passed
    to torch.serialization.safe_globals; keep it to classes whose unpickling runs no code of theirs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    kind = checkpoint_format(path, what)
    if kind not in (TORCH_ZIP, TORCH_PICKLE):
        raise CheckpointError(f"cannot read {what} {path}: it is a {kind}, not a torch.save file; give the file loftup wrote")
    try:
        with open(path, "rb") as f, torch.serialization.safe_globals(list(allow)):
            return torch.load(f, map_location="cpu", weights_only=True)  # a file object: a path's suffix would pick the reader
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused a global, or the bytes are damaged
        if "Unsupported operand" in str(exc) or "Weights only load failed" not in str(exc):
            raise CheckpointError(
                f"cannot read {what} {path}: a damaged pickle ({_refusal(exc)}); the file is damaged or truncated - get it again"
            ) from None
        raise CheckpointError(
            f"cannot read {what} {path}: it holds Python objects, not only tensors ({_refusal(exc)}); "
            f"loftup never unpickles code - {CONVERT_HINT}"
        ) from None
    except Exception as exc:  # each torch version raises its own types for damaged files
        raise CheckpointError(
            f"cannot read {what} {path}: {_one_line(exc) or type(exc).__name__}; the file is damaged or truncated - get it again"
        ) from None


def _refusal(exc: Exception) -> str:
    """The useful part of torch's weights-only refusal ('Unsupported global: GLOBAL x.Y ...')."""
    text = str(exc)
    g = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if g:
        return g.group(1)
    m = re.search(r"(Unsupported (?:global|operand)[^\n]*|Trying to [^\n]*)", text)
    return _one_line(m.group(1) if m else (_one_line(text) or "the weights-only unpickler refused it"), 120)


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a weights file: safetensors, a torch.save file or a TorchScript archive.

    The format is judged by content (`checkpoint_format`). torch.save files are read with
    weights_only=True; TorchScript archives as data, never through torch.jit.load (see
    loftup.io.torchscript). Unwraps a top-level {"state_dict": ...} or {"model": ...}.
    CheckpointError (one line) says which file could not be read, why, and what to do.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; give the path of a .bin/.pth/.ckpt/.safetensors file")
    meta: dict[str, str] = {}
    try:
        kind = checkpoint_format(path)
        if kind == SAFETENSORS:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                obj = {k: f.get_tensor(k) for k in f.keys()}
        elif kind == TORCHSCRIPT:
            from .torchscript import read_torchscript_weights

            with zipfile.ZipFile(path) as z:
                obj = read_torchscript_weights(z, path.stat().st_size)
        else:
            obj = load_weights_only(path)
    except CheckpointError as exc:
        if str(path) in str(exc):
            raise
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    except Exception as exc:  # each reader raises its own types for damaged files
        first = _one_line(exc) or type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {first} - the file is damaged, truncated or not a checkpoint; get it again"
        ) from None
    for wrapper in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state dict (got {type(obj).__name__}); give a weights file")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {[str(k)[:40] for k in bad[:3]]}; give a plain weights file")
    name = first_non_finite(obj)
    if name is not None:
        raise CheckpointError(f"cannot use checkpoint {path}: tensor {name!r} holds NaN or infinite values (a diverged or damaged "
                              "run); use an earlier checkpoint or get the file again")
    return obj, meta


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or +-Inf, in file order; None if all are finite.

    Attention masks (names containing "mask") may hold -Inf by design; only NaN counts there.
    """
    for name, t in tensors.items():
        if not t.is_floating_point() and not t.is_complex():
            continue
        if "mask" in str(name).lower():
            if torch.isnan(t).any():
                return str(name)
        elif not torch.isfinite(t).all():
            return str(name)
    return None


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


def rgb_image(img, name: str = "image"):
    """An 8-bit RGB `PIL.Image` of any PIL image, scaling high-bit-depth images instead of clipping them.

    - 16-bit modes (I;16*, and mode I with values in 0..65535, e.g. 16-bit PNG/TIFF/PGM): v / 257;
    - mode I with other values (32-bit integer data): stretched from its min..max to 0..255;
    - mode F (float): x 255 when the values lie in [0, 1], else stretched from min..max to 0..255;
    - every other mode (1, L, P, LA, PA, RGBA, CMYK, YCbCr, ...) through PIL's convert("RGB").
    `convert("RGB")` alone clips 16-bit grey to 255 (an almost white picture). InputError names
    `name` for non-finite float pixels or a mode PIL cannot convert.
    """
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;"):
        values = np.asarray(img).astype(np.float64)
        if values.size and not np.isfinite(values).all():
            raise InputError(f"{name} has NaN or infinite pixel values; save it as an 8- or 16-bit image")
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            values = values * 255.0
        elif mode != "F" and lo >= 0.0 and hi <= 65535.0:
            values = values / 257.0
        elif hi > lo:
            values = (values - lo) * (255.0 / (hi - lo))
        else:
            values = np.full_like(values, 0.0 if lo <= 0 else 255.0)
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(
            f"cannot convert {name} (PIL mode {mode}) to RGB ({_one_line(exc) or type(exc).__name__}); save it as an RGB or greyscale PNG/JPEG"
        ) from None


def load_image(path: str | Path):
    """Open an image file as an 8-bit RGB `PIL.Image` (see `rgb_image`); InputError if it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return rgb_image(img, str(path))  # 16-bit and float images are scaled, not clipped
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(
            f"cannot read {path} as an image ({type(exc).__name__}); "
            "pass a PNG/JPEG/... file that opens in an image viewer"
        ) from exc
