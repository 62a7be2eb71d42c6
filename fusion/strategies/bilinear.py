"""Low-rank bilinear (multiplicative) fusion: MLB (Kim et al. 2017), the classic VQA fusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fusion.base import Fusion, FusionOutput, presence_matrix, register_fusion
from fusion.layers import mlp
from modalities.base import Tokens


@register_fusion("bilinear")
class BilinearFusion(Fusion):
    """Hadamard product of per-modality projections, ``h = prod_m tanh(U_m x_m)``, then an MLP
    (MLB: Kim et al., "Hadamard Product for Low-rank Bilinear Pooling", ICLR 2017).

    Why: when the answer is an interaction ("is this digit in the set the question names?"),
    a product of the two sides expresses it in one layer: each feature of ``h`` is one
    rank-1 term ``<u_k, x_1> <v_k, x_2>`` of a bilinear form. Concatenation leaves the MLP to
    approximate the product, which takes many more samples (docs/tasks.md, "VQA: results").
    An absent modality's factor is a learned *missing* vector (after the same ``tanh``), so
    a row's product never reads placeholder values. With one modality ``h = tanh(U x)``.
    Contributions: for each present modality, how far ``h`` moves when its factor is swapped
    for the missing vector, as a share of the present modalities' sum.
    """

    def __init__(self, d_model: int, modalities: Sequence[str], **kw: Any) -> None:
        super().__init__(d_model, modalities, **kw)
        self.factor = nn.ModuleDict({m: nn.Linear(d_model, d_model) for m in self.modalities})
        self.missing = nn.Parameter(torch.randn(len(self.modalities), d_model) * 0.02)
        self.out = mlp(d_model, d_model, self.dropout)

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> FusionOutput:
        pooled = self.pooled(tokens)
        presence = presence_matrix(self.modalities, present)  # (B, M)
        factors = torch.stack(
            [
                torch.tanh(
                    torch.where(
                        presence[:, i : i + 1],
                        self.factor[m](pooled[m]),
                        self.missing[i].to(pooled[m].dtype),
                    )
                )
                for i, m in enumerate(self.modalities)
            ],
            dim=1,
        )  # (B, M, d)
        h = factors.prod(1)
        with torch.no_grad():
            missing = torch.tanh(self.missing).to(factors.dtype)
            moved = []
            for i in range(len(self.modalities)):
                swapped = factors.clone()
                swapped[:, i] = missing[i]
                moved.append((h - swapped.prod(1)).float().norm(dim=-1))
            moved = torch.stack(moved, 1) * presence
            shares = moved / moved.sum(1, keepdim=True).clamp_min(1e-12)
        return FusionOutput(
            embedding=self.out(h),
            pooled=pooled,
            contributions={m: shares[:, i] for i, m in enumerate(self.modalities)},
        )
