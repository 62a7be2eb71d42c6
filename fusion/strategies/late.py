"""Late fusion: one decision branch per modality, logits averaged over present modalities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fusion.base import (
    Fusion,
    FusionOutput,
    presence_matrix,
    present_weights,
    register_fusion,
    weighted_sum,
)
from fusion.layers import mlp
from modalities.base import Tokens


@register_fusion("late")
class LateFusion(Fusion):
    """Each modality's pooled tokens go through its own MLP branch; the head scores every
    branch and averages the logits over the modalities present in the row.

    The decision is a sum of per-modality terms, so late fusion cannot model interactions
    (it fails the XOR test by design); it is the baseline that tolerates any missing pattern.
    ``embedding`` is the mean of the present branches (for retrieval/inspection only).
    Contributions: the averaging weights (1/n_present).
    """

    def __init__(self, d_model: int, modalities: Sequence[str], **kw: Any) -> None:
        super().__init__(d_model, modalities, **kw)
        self.branch = nn.ModuleDict(
            {m: mlp(d_model, d_model, self.dropout) for m in self.modalities}
        )

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> FusionOutput:
        pooled = self.pooled(tokens)
        branches = {m: self.branch[m](pooled[m]) for m in self.modalities}
        weights = present_weights(presence_matrix(self.modalities, present))
        stacked = torch.stack([branches[m] for m in self.modalities], 1)
        return FusionOutput(
            embedding=weighted_sum(stacked, weights),
            pooled=pooled,
            branches=branches,
            contributions={m: weights[:, i] for i, m in enumerate(self.modalities)},
        )
