"""The LoftUp upsampler: config, layers, the hub-compatible model, checkpoint I/O, deploy transforms."""

from .config import LoftUpConfig
from .upsampler import LoftUp, LoftUpUpsampler

__all__ = ["LoftUp", "LoftUpConfig", "LoftUpUpsampler"]
