"""Bottleneck fusion (MBT, Nagrani et al. 2021; Perceiver-style latents)."""

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
)
from fusion.layers import AttentionBlock, SlotConcat
from modalities.base import Tokens


@register_fusion("bottleneck")
class BottleneckFusion(Fusion):
    """K learned latent tokens carry all cross-modal exchange.

    In each of ``layers`` layers, every modality runs its own transformer block over
    ``[its tokens, latents]``; the updated latents are then averaged over the modalities
    present in the row (absent ones get weight 0) and go through one shared latent
    self-attention block (Perceiver's latent transformer), while each modality keeps its own
    updated tokens. Without that latent block a single layer would be a sum of per-modality
    terms (additive, like late fusion: it cannot model an interaction such as XOR).
    Cost is linear in the number of modalities, so it scales to 3+ modalities.
    Readout: the mean of the final latents and each modality's pooled final tokens (which
    read the latents), concatenated and mapped through an MLP (``SlotConcat``); a latent-only
    readout starts as a uniform average over tokens and hides a local finding.
    With one modality it is a transformer with K extra register tokens.
    ``attention["latents->m"]``: (B, layers, K, N_m) weights from latents to m's tokens (eval).
    Contributions: attention mass the latents put on each present modality's tokens in the
    last layer, normalised over modalities.
    """

    READOUT_POOLING = True

    def __init__(
        self,
        d_model: int,
        modalities: Sequence[str],
        *,
        latents: int = 8,
        keep_attention: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(d_model, modalities, **kw)
        self.keep_attention = keep_attention
        self.latents = nn.Parameter(torch.randn(latents, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {m: AttentionBlock(d_model, self.heads, self.dropout) for m in self.modalities}
            )
            for _ in range(self.layers)
        )
        self.latent_blocks = nn.ModuleList(
            AttentionBlock(d_model, self.heads, self.dropout) for _ in range(self.layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.combine = SlotConcat(len(self.modalities) + 1, d_model, self.dropout)

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> FusionOutput:
        presence = presence_matrix(self.modalities, present)
        weights = present_weights(presence)  # (B, M)
        x = {m: tokens[m].values for m in self.modalities}
        b = presence.shape[0]
        k = self.latents.shape[0]
        lat = self.latents.unsqueeze(0).expand(b, -1, -1).to(x[self.modalities[0]].dtype)
        lat_mask = torch.ones(b, k, dtype=torch.bool, device=lat.device)
        maps: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        for layer, latent_block in zip(self.blocks, self.latent_blocks, strict=True):
            new_lat = []
            for i, m in enumerate(self.modalities):
                n = x[m].shape[1]
                # An absent modality's tokens are all masked; its latents are weighted 0 below.
                mask = torch.cat([tokens[m].mask & presence[:, i : i + 1], lat_mask], 1)
                need = self.keep_attention or not self.training or layer is self.blocks[-1]
                out, w = layer[m](torch.cat([x[m], lat], 1), mask, need_weights=need)
                x[m], lat_m = out[:, :n], out[:, n:]
                new_lat.append(lat_m)
                if w is not None:
                    maps[m].append(w[:, n:, :n])  # latent queries -> modality tokens
            lat = (torch.stack(new_lat, 1) * weights.view(b, -1, 1, 1).to(lat.dtype)).sum(1)
            lat, _ = latent_block(lat, lat_mask)
        last = [maps[m][-1].float().sum(-1).mean(-1) for m in self.modalities]
        mass = torch.stack(last, 1).detach() * presence
        share = mass / mass.sum(1, keepdim=True).clamp_min(1e-12)
        keep = self.keep_attention or not self.training
        attention = (
            {f"latents->{m}": torch.stack(maps[m], 1) for m in self.modalities} if keep else {}
        )
        outs = [self.norm(lat.mean(1))] + [
            self.pool(m, x[m], tokens[m].mask & presence[:, i : i + 1], readout=True)
            for i, m in enumerate(self.modalities)
        ]
        embedding, _ = self.combine(
            outs, torch.cat([torch.ones_like(presence[:, :1]), presence], 1)
        )
        return FusionOutput(
            embedding=embedding,
            pooled=self.pooled(tokens),
            attention=attention,
            contributions={m: share[:, i] for i, m in enumerate(self.modalities)},
        )
