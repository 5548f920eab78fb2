"""The one download in loftup: a URL into a cache file, once, checked, never half-written.

Backbone weights (`weights="online"`) and the official LoftUp upsamplers (`upsampler="official"`)
both come through `download`. A file in the cache is used as it is (no request); a new one is
streamed to a temporary name beside it, its length checked against the server's
Content-Length and its sha256 against the registry's (when the row has one), and only then
renamed into place (`loftup.io.atomic_write`). Every failure - no network, an HTTP error, a
download cut short, a wrong hash - is one CheckpointError line, and nothing is left in the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from ..errors import CheckpointError

TIMEOUT_S = 60.0  # seconds without a byte before a download is given up
CHUNK = 1 << 20


def cache_name(url: str) -> str:
    """File name of a download in a cache folder; Hugging Face files are prefixed with their
    repository, since several repos name their weights alike (pytorch_model.bin)."""
    parts = urlparse(url).path.strip("/").split("/")
    if "huggingface.co" in urlparse(url).netloc and "resolve" in parts and parts.index("resolve") >= 2:
        return f"{parts[parts.index('resolve') - 1]}_{parts[-1]}"
    return parts[-1]


def download(url: str, dst: str | Path, sha256: str | None = None, what: str = "weights",
             refused: str | None = None) -> Path:
    """`url` saved as `dst` (returned at once when it is already there); `sha256`: the hash, or a
    prefix of it, the file must have; `refused`: the message for an HTTP 401 / 403 (e.g. licence-gated
    weights). CheckpointError names the URL, the cause and what to do."""
    dst = Path(dst)
    if dst.is_file():
        return dst
    from . import atomic_write

    atomic_write(dst, lambda tmp: _fetch(url, tmp, sha256, what, refused))
    return dst


def _fetch(url: str, tmp: Path, sha256: str | None, what: str, refused: str | None = None) -> None:
    hint = f"check the network, or download {url} by hand and pass its path"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as f:
            expected = response.headers.get("Content-Length")
            got, digest = _copy(response, f, _label(url, what, expected))
    except urllib.error.HTTPError as exc:
        if refused and exc.code in (401, 403):
            raise CheckpointError(f"{refused} (HTTP {exc.code})") from None
        raise CheckpointError(f"cannot download {what} from {url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except http.client.IncompleteRead as exc:
        raise CheckpointError(f"download of {url} was cut short ({len(exc.partial)} bytes arrived); nothing was kept - run again") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"cannot download {what} from {url}: {reason}; {hint}") from None
    if expected is not None and got != int(expected):
        raise CheckpointError(f"download of {url} was cut short ({got} of {expected} bytes); nothing was kept - run again")
    if sha256 and not digest.startswith(sha256.lower()):
        raise CheckpointError(f"{url} has sha256 {digest[:16]}..., not the expected {sha256[:16]}...; the file was not kept "
                              "(a changed or damaged download) - run again, or report it if it repeats")


def _copy(response, f, label: str | None) -> tuple[int, str]:
    """Stream the body into f: (bytes, sha256 hex); a progress line on a terminal for large files."""
    h, got = hashlib.sha256(), 0
    while chunk := response.read(CHUNK):
        f.write(chunk)
        h.update(chunk)
        got += len(chunk)
        if label:
            print(f"\r{label}: {got / 1e6:.0f} MB", end="", file=sys.stderr, flush=True)
    if label:
        print(file=sys.stderr)
    return got, h.hexdigest()


def _label(url: str, what: str, expected: str | None) -> str | None:
    """'downloading ... (N MB)' when stderr is a terminal and the file is over 10 MB, else None."""
    size = int(expected) if expected and expected.isdigit() else 0
    if not sys.stderr.isatty() or size < 10e6:
        return None
    return f"downloading {what} {cache_name(url)} ({size / 1e6:.0f} MB)"
