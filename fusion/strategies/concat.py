"""Concatenation fusion: pooled embeddings side by side, a learned stand-in for absent ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fusion.base import Fusion, FusionOutput, presence_matrix, register_fusion
from fusion.layers import SlotConcat
from modalities.base import Tokens


@register_fusion("concat")
class ConcatFusion(Fusion):
    """Concatenate the pooled (B, d) embedding of every modality and map it through an MLP.

    An absent modality's slot holds a learned per-modality *missing* embedding, so the MLP
    can tell "absent" from any real value (it never sees a zero tensor posing as data).
    With one modality this is the unimodal path: masked mean pool + MLP.
    Contributions: each present modality's share of the norm of the first layer's
    pre-activation (``||W_m x_m||`` over the sum of present ones).
    """

    def __init__(self, d_model: int, modalities: Sequence[str], **kw: Any) -> None:
        super().__init__(d_model, modalities, **kw)
        self.combine = SlotConcat(len(self.modalities), d_model, self.dropout)

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> FusionOutput:
        pooled = self.pooled(tokens)
        presence = presence_matrix(self.modalities, present)
        embedding, shares = self.combine([pooled[m] for m in self.modalities], presence)
        return FusionOutput(
            embedding=embedding,
            pooled=pooled,
            contributions={m: shares[:, i] for i, m in enumerate(self.modalities)},
        )
