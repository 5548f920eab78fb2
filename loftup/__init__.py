"""loftup: train, export and deploy LoftUp feature upsamplers."""

__version__ = "0.1.0"
