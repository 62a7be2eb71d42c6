"""Gated multimodal unit (Arevalo et al. 2017) generalised to N modalities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fusion.base import Fusion, FusionOutput, presence_matrix, register_fusion
from fusion.layers import mlp
from modalities.base import Tokens


@register_fusion("gated")
class GatedFusion(Fusion):
    """GMU: ``h_m = tanh(W_m x_m)``; gates ``z = softmax_m(W_z [x_1..x_M])`` per feature;
    ``h = sum_m z_m * h_m``, followed by an MLP (the paper feeds ``h`` to an MLP classifier).

    The gate network sees the concatenation with a learned missing embedding in absent slots;
    absent modalities' gate logits are set to -inf before the softmax, so their gate weight
    is exactly zero and ``h`` mixes present modalities only. With two modalities the softmax
    over two gates equals the paper's ``z, 1 - z``.
    Contributions: the feature-averaged gate weight of each modality.
    """

    def __init__(self, d_model: int, modalities: Sequence[str], **kw: Any) -> None:
        super().__init__(d_model, modalities, **kw)
        n = len(self.modalities)
        self.transform = nn.ModuleDict({m: nn.Linear(d_model, d_model) for m in self.modalities})
        self.missing = nn.Parameter(torch.randn(n, d_model) * 0.02)
        self.gate = nn.Sequential(nn.LayerNorm(n * d_model), nn.Linear(n * d_model, n * d_model))
        self.out = mlp(d_model, d_model, self.dropout)

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> FusionOutput:
        pooled = self.pooled(tokens)
        presence = presence_matrix(self.modalities, present)  # (B, M)
        n, d = len(self.modalities), self.d_model
        slots = [
            torch.where(presence[:, i : i + 1], pooled[m], self.missing[i].to(pooled[m].dtype))
            for i, m in enumerate(self.modalities)
        ]
        hidden = torch.stack(
            [torch.tanh(self.transform[m](pooled[m])) for m in self.modalities], dim=1
        )  # (B, M, d)
        logits = self.gate(torch.cat(slots, dim=1)).view(-1, n, d).float()
        logits = logits.masked_fill(~presence.unsqueeze(-1), float("-inf"))
        z = torch.softmax(logits, dim=1)  # every row has a present modality, so no NaN
        h = (z.to(hidden.dtype) * torch.where(presence.unsqueeze(-1), hidden, 0)).sum(1)
        share = z.mean(-1).detach()
        return FusionOutput(
            embedding=self.out(h),
            pooled=pooled,
            contributions={m: share[:, i] for i, m in enumerate(self.modalities)},
        )
