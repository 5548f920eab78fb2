"""torch.hub entry points under the official LoftUp names (those of andrehuang/loftup's hubconf).

    up = torch.hub.load("path/to/loftup", "loftup_dinov2s", source="local")                # official weights (downloaded once)
    up = torch.hub.load("path/to/loftup", "loftup_dinov2s", source="local", upsampler="shipped")  # offline
    hr = up("photo.jpg")          # (1, 384, 448, W): backbone + upsampler, as loftup.load gives them
    hr = up(lr_feats, image)      # the official call: raw backbone features + the normalised guidance image

Each entry returns `loftup.load(<its backbone>, upsampler="official")` (pretrained=False: an
untrained upsampler); every `loftup.load` keyword passes through. Each is a one-line alias over
one row of `loftup.model.registry.WEIGHTS`.
"""

dependencies = ["torch", "numpy", "PIL", "safetensors"]

from loftup.api import hub_model as _hub  # noqa: E402


def loftup_dinov2s(pretrained=True, **kwargs):
    return _hub("loftup_dinov2s", pretrained, **kwargs)


def loftup_dinov2s_reg(pretrained=True, **kwargs):
    return _hub("loftup_dinov2s_reg", pretrained, **kwargs)


def loftup_dinov2b(pretrained=True, **kwargs):
    return _hub("loftup_dinov2b", pretrained, **kwargs)


def loftup_dinov2b_reg(pretrained=True, **kwargs):
    return _hub("loftup_dinov2b_reg", pretrained, **kwargs)


def loftup_clip(pretrained=True, **kwargs):
    return _hub("loftup_clip", pretrained, **kwargs)


def loftup_siglip(pretrained=True, **kwargs):
    return _hub("loftup_siglip", pretrained, **kwargs)


def loftup_siglip2(pretrained=True, **kwargs):
    return _hub("loftup_siglip2", pretrained, **kwargs)
