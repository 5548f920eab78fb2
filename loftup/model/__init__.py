"""The LoftUp upsampler: config, layers, the hub-compatible model, checkpoint I/O, deploy transforms."""

from .checkpoint import infer_config, load_checkpoint, load_or_init, save_checkpoint
from .config import LoftUpConfig
from .deploy import fold_batchnorm
from .upsampler import LoftUp, LoftUpUpsampler

__all__ = ["LoftUp", "LoftUpConfig", "LoftUpUpsampler", "fold_batchnorm", "infer_config", "load_checkpoint", "load_or_init", "save_checkpoint"]
