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


LAYER_SCALE_INIT = 1e-3


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
        # LayerScale (CaiT): each residual branch is scaled per channel, starting near zero, so
        # a block starts as (almost) the identity. Why: with full-size branches at init, the
        # attention and feed-forward updates swamp a small between-patient difference in the
        # tokens (a lesion), and the fusion never sees it; starting from the identity the
        # readout sees the encoders' tokens as they are and the blocks learn to add to them
        # (measured in docs/training.md).
        self.scale_attn = nn.Parameter(torch.full((d_model,), LAYER_SCALE_INIT))
        self.scale_ff = nn.Parameter(torch.full((d_model,), LAYER_SCALE_INIT))

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
        x = x + self.drop(out * gate) * self.scale_attn.to(out.dtype)
        x = x + self.drop(self.ff(self.norm_ff(x))) * self.scale_ff.to(x.dtype)
        if weights is not None:
            weights = weights * gate.to(weights.dtype)
        return x, weights


class SlotConcat(nn.Module):
    """Concatenate per-modality vectors (B, d) into one (B, d) embedding through an MLP.

    An absent modality's slot holds a learned *missing* embedding, so the MLP can tell
    "absent" from any real value. Concatenation (not an average) keeps which modality said
    what, which an interaction needs; MulT ends the same way. ``forward`` also returns each
    present modality's share of the first layer's pre-activation norm (``||W_m x_m||`` over
    the present ones), the strategies' ``contributions``.
    """

    def __init__(self, n: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.n, self.d = n, d_model
        self.missing = nn.Parameter(torch.randn(n, d_model) * 0.02)
        self.norm = nn.LayerNorm(n * d_model)
        self.fc1 = nn.Linear(n * d_model, d_model)
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, d_model))

    def forward(
        self, vectors: list[torch.Tensor], presence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``vectors``: n tensors (B, d) in modality order; ``presence``: (B, n) bool.

        Returns the embedding (B, d) and the contribution shares (B, n).
        """
        slots = [
            torch.where(presence[:, i : i + 1], v, self.missing[i].to(v.dtype))
            for i, v in enumerate(vectors)
        ]
        x = self.norm(torch.cat(slots, dim=1))
        embedding = self.out(self.fc1(x))
        with torch.no_grad():  # split fc1's weight by modality: no extra forward pass
            w = self.fc1.weight.to(x.dtype).view(self.d, self.n, self.d)  # (out, modality, in)
            parts = torch.einsum("bmi,omi->bmo", x.view(-1, self.n, self.d), w).float()
            parts = parts.norm(dim=-1) * presence
            shares = parts / parts.sum(1, keepdim=True).clamp_min(1e-12)
        return embedding, shares


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the rows where a modality is present: standardises each feature of a
    pooled (B, d) vector across patients (batch statistics in training, running ones in eval).

    Why: a pooled encoder output can vary between patients by a few percent of its value
    (the synthetic CT: between-patient std 0.03 on a mean of 1.1, because anatomy dominates
    every channel) while another modality varies by its whole scale. Unstandardised, the
    fusion MLP sees only the loud modality; standardised, a small but consistent finding is
    as visible as any other feature (measured in docs/training.md). Rows where the modality
    is absent are left out of the statistics and returned unchanged.
    """

    def __init__(self, d: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.bool()
        n = int(rows.sum())
        if self.training and n >= 2:
            sel = x[rows].float()
            mean, var = sel.mean(0), sel.var(0, unbiased=False)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * sel.var(0, unbiased=True))
        else:
            mean, var = self.running_mean, self.running_var
        out = (x.float() - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return torch.where(rows.unsqueeze(-1), out.to(x.dtype), x)
