"""Concatenation fusion: pooled embeddings side by side, a learned stand-in for absent ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fusion.base import Fusion, FusionOutput, presence_matrix, register_fusion
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
        n = len(self.modalities)
        self.missing = nn.Parameter(torch.randn(n, d_model) * 0.02)
        self.norm = nn.LayerNorm(n * d_model)
        self.fc1 = nn.Linear(n * d_model, d_model)
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(self.dropout), nn.Linear(d_model, d_model))

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> FusionOutput:
        pooled = self.pooled(tokens)
        presence = presence_matrix(self.modalities, present)
        slots = [
            torch.where(presence[:, i : i + 1], pooled[m], self.missing[i].to(pooled[m].dtype))
            for i, m in enumerate(self.modalities)
        ]
        x = self.norm(torch.cat(slots, dim=1))
        embedding = self.out(self.fc1(x))
        # Per-slot share of fc1's input: split the weight by modality (no extra forward pass).
        n, d = len(self.modalities), self.d_model
        with torch.no_grad():
            w = self.fc1.weight.to(x.dtype).view(d, n, d)  # (out, modality, in)
            parts = torch.einsum("bmi,omi->bmo", x.view(-1, n, d), w).float().norm(dim=-1)
            parts = parts * presence
            shares = parts / parts.sum(1, keepdim=True).clamp_min(1e-12)
        return FusionOutput(
            embedding=embedding,
            pooled=pooled,
            contributions={m: shares[:, i] for i, m in enumerate(self.modalities)},
        )
