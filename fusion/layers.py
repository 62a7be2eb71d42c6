"""Building blocks shared by the strategies: a pre-LN transformer block that is safe on rows
whose keys are all masked (absent modalities), and small MLPs."""

from __future__ import annotations

import torch
from torch import nn


def mlp(d_in: int, d_out: int, dropout: float, hidden: int | None = None) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear: the projection used after pooling."""
    hidden = hidden or d_out
    return nn.Sequential(
        nn.LayerNorm(d_in),
        nn.Linear(d_in, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, d_out),
    )


class AttentionBlock(nn.Module):
    """Pre-LN transformer block: (cross- or self-) attention then a feed-forward layer.

    ``nn.MultiheadAttention`` returns NaN for a row whose keys are all masked (softmax over
    nothing). Such rows occur whenever the key modality is absent, so those rows attend to all
    (zeroed) keys instead and their attention update is multiplied by zero: the query tokens
    pass through unchanged by attention, and no NaN reaches the gradients.
    """

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model) if cross else None
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * d_model, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        kv: torch.Tensor | None = None,
        kv_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Update query tokens ``x`` (B, N, d); keys are ``kv`` (cross) or ``x`` (self).

        Returns the new tokens and, if asked, head-averaged weights (B, N, N_kv), zero on rows
        without any valid key.
        """
        q = self.norm_q(x)
        if kv is None:
            k, k_mask = q, x_mask
        else:
            assert self.norm_kv is not None and kv_mask is not None
            k, k_mask = self.norm_kv(kv), kv_mask
        has_keys = k_mask.any(1)
        padding = ~(k_mask | ~has_keys.unsqueeze(1))  # True = ignore; empty rows ignore nothing
        out, weights = self.attn(
            q,
            k,
            k,
            key_padding_mask=padding,
            need_weights=need_weights,
            average_attn_weights=True,
        )
        gate = has_keys.view(-1, 1, 1).to(out.dtype)
        x = x + self.drop(out * gate)
        x = x + self.drop(self.ff(self.norm_ff(x)))
        if weights is not None:
            weights = weights * gate.to(weights.dtype)
        return x, weights
