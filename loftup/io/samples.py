"""Real photos that ship with installed packages (scikit-image), usable offline by name."""

from __future__ import annotations

from PIL import Image

from ..errors import InputError, closest

# scikit-image's bundled photos (skimage.data.<name>()); grayscale ones are converted. "cat" is
# skimage's alias of "chelsea"; brick, grass and gravel are grayscale texture photos.
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "retina", "camera", "coins",
           "hubble_deep_field", "brick", "grass", "gravel")
PREFIX = "sample:"


def load_sample(name: str) -> Image.Image:
    """A bundled photo as a PIL RGB image, e.g. load_sample('astronaut')."""
    if name not in SAMPLES:
        raise InputError(f"unknown sample image {name!r}{closest(name, SAMPLES)}; available: {', '.join(SAMPLES)}")
    import numpy as np
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3].astype(np.uint8)).convert("RGB")


def is_sample(spec: str) -> bool:
    return str(spec).startswith(PREFIX)
