"""Reading image files for the pipeline (`loftup.pipeline` owns sizing, resizing and normalising)."""

from __future__ import annotations

from pathlib import Path

from loftup.errors import InputError


def load_image(path: str | Path):
    """Open an image file as an 8-bit RGB `PIL.Image` (see loftup.io.rgb_image); InputError if it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    from loftup.io import rgb_image

    try:
        with Image.open(path) as img:
            return rgb_image(img, str(path))  # 16-bit and float images are scaled, not clipped
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(
            f"cannot read {path} as an image ({type(exc).__name__}); "
            "pass a PNG/JPEG/... file that opens in an image viewer"
        ) from exc
