"""The model core: fusion strategies, heads, ``FusionModel`` and its factory."""

from fusion.base import (
    Fusion,
    FusionOutput,
    builtin_fusion_names,
    create_fusion,
    fusion_names,
    register_fusion,
)
from fusion.config import FusionConfig, HeadConfig, ModelConfig, StackConfig
from fusion.heads import Head, create_head, head_names, register_head
from fusion.model import FusionModel, build_model, drop_modalities

__all__ = [
    "Fusion",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "Head",
    "HeadConfig",
    "ModelConfig",
    "StackConfig",
    "build_model",
    "builtin_fusion_names",
    "create_fusion",
    "create_head",
    "drop_modalities",
    "fusion_names",
    "head_names",
    "register_fusion",
    "register_head",
]
