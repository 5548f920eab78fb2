"""The upsamplers: LoftUp (config, layers, hub-compatible model, checkpoint I/O, deploy transforms),
and the other kinds (LiFT, FeatUp-JBU) behind one factory, `build_upsampler`."""

from .checkpoint import build_upsampler, infer_config, load_checkpoint, load_or_init, save_checkpoint
from .config import LoftUpConfig
from .deploy import fold_batchnorm
from .featup_jbu import FeatUpJBU, JbuConfig
from .kinds import KINDS, UPSAMPLER_KINDS, kind_of
from .lift import LiFT, LiftConfig
from .upsampler import LoftUp, LoftUpUpsampler

__all__ = ["KINDS", "UPSAMPLER_KINDS", "FeatUpJBU", "JbuConfig", "LiFT", "LiftConfig", "LoftUp", "LoftUpConfig",
           "LoftUpUpsampler", "build_upsampler", "fold_batchnorm", "infer_config", "kind_of", "load_checkpoint",
           "load_or_init", "save_checkpoint"]
