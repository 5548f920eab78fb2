"""loftup: train, export and deploy LoftUp feature upsamplers.

    import loftup
    up = loftup.load("dinov2_vits14")   # backbone + the shipped LoftUp, one nn.Module (loftup.api)
    hr = up("photo.jpg")                # (1, 384, 448, W) features at the image's resolution

`load`, `export_engine` (`loftup export`) and `run_bench` (`loftup bench`) come from loftup.api,
imported on first use (a module `__getattr__`), so `import loftup` and `loftup --help` never
import torch. (`export` and `bench` are the subpackages loftup.export and loftup.bench.)
"""

from ._version import __version__

_API = ("FeatureUpsampler", "load", "export_engine", "run_bench")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'loftup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
