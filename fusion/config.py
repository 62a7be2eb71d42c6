"""Typed model config: which fusion strategy and head, and their sizes.

Names are checked against the registries when the model is built (an unknown name raises an
error listing the valid ones); option dicts are checked against the constructor's keywords.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FusionConfig(BaseModel):
    """Fusion strategy by name plus its sizes; ``options`` go to the strategy (e.g.
    ``{"latents": 8}`` for ``bottleneck``, ``{"keep_attention": true}``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "concat"
    layers: int = Field(1, ge=1)
    heads: int = Field(4, ge=1)
    pooling: Literal["max", "mean"] = Field(
        "max", description="how a modality's tokens become one vector (see fusion.base.pool)"
    )
    options: dict[str, Any] = Field(default_factory=dict)


class HeadConfig(BaseModel):
    """Head by name; ``options`` go to the head (``num_classes``, ``class_weights``,
    ``labels``, ``pos_weight``, ``pair``, ``proj_dim`` ...)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "binary"
    options: dict[str, Any] = Field(default_factory=dict)


class StackConfig(BaseModel):
    """Input-level early fusion: co-registered volume ``modalities`` (same spec size) stacked
    as channels, each with a presence channel, into one shared volume ``encoder`` (a
    ``VolumeEncoderConfig``: ``{name: tiny}``, ``{name: resnet18, out_dim: 128}``...). To
    the fusion strategy the stack is one modality called ``name``
    (``fusion.strategies.early.ChannelStackEncoder``; docs/fusion.md)."""

    model_config = ConfigDict(extra="forbid")

    modalities: list[str] = Field(min_length=2)
    name: str = "volumes"
    encoder: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(BaseModel):
    """Everything ``build_model`` needs besides the encoders.

    ``modality_dropout``: per-modality drop probability during training (a row always keeps
    at least one modality). ``max_positions``: learned positional embeddings for up to that
    many tokens per modality (0 = none; most encoders already encode position).
    ``stack``: channel-stack these volume modalities into one encoder (``StackConfig``).
    """

    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_positions: int = Field(0, ge=0)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    stack: StackConfig | None = None
