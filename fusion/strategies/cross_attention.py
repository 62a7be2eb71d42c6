"""MulT-style bidirectional cross-modal attention (Tsai et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fusion.base import (
    Fusion,
    FusionOutput,
    presence_matrix,
    register_fusion,
)
from fusion.layers import AttentionBlock, SlotConcat
from modalities.base import Tokens


def pair_key(target: str, source: str) -> str:
    """Name of the stream where ``target``'s tokens attend to ``source``'s: ``"ct<-note"``."""
    return f"{target}<-{source}"


@register_fusion("cross_attention")
class CrossAttentionFusion(Fusion):
    """For every ordered pair (a, b), a's tokens attend to b's through ``layers`` cross-modal
    blocks (keys masked by b's token mask; rows where b is absent get no update). For each
    target a, the streams from the present sources are averaged, then ``layers`` self-attention
    blocks run over a's tokens, which are pooled. The per-modality vectors are concatenated
    (a learned stand-in for absent modalities) and mapped through an MLP, as in MulT. (An
    earlier version took a softmax-weighted average of them: an average of the CT and note
    vectors cannot express "lesion XOR finding", and it did not learn one end to end.)

    With one modality there are no pairs: self-attention + pooling (a unimodal transformer).
    ``attention["a<-b"]``: (B, layers, N_a, N_b) head-averaged cross-attention weights; kept in
    eval mode (or always with ``keep_attention=True``) because asking for weights disables
    the fused attention kernels.
    Contributions: each present modality's share of the combining MLP's first layer.
    """

    READOUT_POOLING = True

    def __init__(
        self, d_model: int, modalities: Sequence[str], *, keep_attention: bool = False, **kw: Any
    ) -> None:
        super().__init__(d_model, modalities, **kw)
        self.keep_attention = keep_attention
        self.pairs = [(a, b) for a in self.modalities for b in self.modalities if a != b]

        def stack(cross: bool) -> nn.ModuleList:
            return nn.ModuleList(
                AttentionBlock(d_model, self.heads, self.dropout, cross=cross)
                for _ in range(self.layers)
            )

        self.cross = nn.ModuleDict({pair_key(a, b): stack(True) for a, b in self.pairs})
        self.self_attn = nn.ModuleDict({m: stack(False) for m in self.modalities})
        self.combine = SlotConcat(len(self.modalities), d_model, self.dropout)

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> FusionOutput:
        need_weights = self.keep_attention or not self.training
        presence = presence_matrix(self.modalities, present)
        attention: dict[str, torch.Tensor] = {}
        fused = []
        for ai, a in enumerate(self.modalities):
            x, x_mask = tokens[a].values, tokens[a].mask
            streams, weights = [], []
            for bi, b in enumerate(self.modalities):
                if a == b:
                    continue
                z, maps = x, []
                for block in self.cross[pair_key(a, b)]:
                    z, w = block(z, x_mask, tokens[b].values, tokens[b].mask, need_weights)
                    if w is not None:
                        maps.append(w)
                if maps:
                    attention[pair_key(a, b)] = torch.stack(maps, 1)
                streams.append(z)
                weights.append(presence[:, bi])
            if streams:
                # Average the streams of the present sources; a row with no other modality
                # present keeps its own tokens.
                w = torch.stack(weights, 1).float()
                n = w.sum(1, keepdim=True)
                w = torch.where(n > 0, w / n.clamp_min(1.0), 0.0)
                h = (torch.stack(streams, 1) * w.view(*w.shape, 1, 1).to(x.dtype)).sum(1)
                h = torch.where((n > 0).view(-1, 1, 1), h, x)
            else:
                h = x
            for block in self.self_attn[a]:
                h, _ = block(h, x_mask)
            fused.append(self.pool(a, h, x_mask & presence[:, ai : ai + 1], readout=True))
        embedding, shares = self.combine(fused, presence)
        return FusionOutput(
            embedding=embedding,
            pooled=self.pooled(tokens),
            attention=attention,
            contributions={m: shares[:, i] for i, m in enumerate(self.modalities)},
        )
