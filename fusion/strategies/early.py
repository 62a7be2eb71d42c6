"""Early fusion: one joint token stream, and channel stacking of co-registered volumes.

Two levels, both honest about what they are:

* ``early`` (registered strategy): the projected tokens of all modalities are concatenated
  into a single sequence with a learned [CLS] token and run through shared self-attention
  blocks, so modalities interact from the first layer (single-stream, VisualBERT-style).
  Absent modalities' tokens are masked out of the sequence.
* ``ChannelStackEncoder`` + ``stack_volume_inputs``: input-level fusion of co-registered
  volumes of equal size (e.g. CT and MRI resampled to one grid). The named volumes are stacked
  as channels before one shared encoder; an absent volume is replaced by a learned constant
  volume AND flagged by a presence channel (1 = real, 0 = missing), so the encoder is told a
  channel is missing rather than shown a zero tensor posing as data. To FusionModel the stack
  is one modality (default name ``"volumes"``); combine it with other modalities using any
  strategy, ``early`` included, or alone as a unimodal model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fusion.base import Fusion, FusionOutput, presence_matrix, register_fusion
from fusion.layers import AttentionBlock, SlotConcat
from modalities.base import Tokens
from modalities.errors import ConfigError


@register_fusion("early")
class EarlyFusion(Fusion):
    """Single-stream joint self-attention over all modalities' tokens plus a [CLS] token.

    Cost is quadratic in the total token count (sum over modalities).
    Readout: the [CLS] output and each modality's pooled output tokens (which attended to
    every modality), concatenated and mapped through an MLP (``SlotConcat``). A [CLS]-only
    readout starts as a uniform average over all tokens, which hides a local finding until
    attention has learned where to look; the pooled tokens keep it visible.
    ``attention["cls->m"]``: (B, layers, N_m) weights from [CLS] to m's tokens (eval mode).
    Contributions: [CLS] attention mass on each present modality in the last layer.
    """

    READOUT_POOLING = True

    def __init__(
        self, d_model: int, modalities: Sequence[str], *, keep_attention: bool = False, **kw: Any
    ) -> None:
        super().__init__(d_model, modalities, **kw)
        self.keep_attention = keep_attention
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            AttentionBlock(d_model, self.heads, self.dropout) for _ in range(self.layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.combine = SlotConcat(len(self.modalities) + 1, d_model, self.dropout)

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> FusionOutput:
        presence = presence_matrix(self.modalities, present)
        first = tokens[self.modalities[0]].values
        b = first.shape[0]
        values = [self.cls.expand(b, -1, -1).to(first.dtype)]
        masks = [torch.ones(b, 1, dtype=torch.bool, device=first.device)]
        spans = []
        start = 1
        for i, m in enumerate(self.modalities):
            n = tokens[m].values.shape[1]
            values.append(tokens[m].values)
            masks.append(tokens[m].mask & presence[:, i : i + 1])
            spans.append((start, start + n))
            start += n
        x, mask = torch.cat(values, 1), torch.cat(masks, 1)
        keep = self.keep_attention or not self.training
        maps = []
        for block in self.blocks:
            need = keep or block is self.blocks[-1]
            x, w = block(x, mask, need_weights=need)
            if w is not None:
                maps.append(w[:, 0])  # the [CLS] query row: (B, N_total)
        last = maps[-1].float().detach()
        mass = torch.stack([last[:, s:e].sum(1) for s, e in spans], 1) * presence
        share = mass / mass.sum(1, keepdim=True).clamp_min(1e-12)
        attention = {}
        if keep:
            joint = torch.stack(maps, 1)
            attention = {
                f"cls->{m}": joint[..., s:e]
                for m, (s, e) in zip(self.modalities, spans, strict=True)
            }
        outs = [self.norm(x[:, 0])] + [
            self.pool(m, x[:, s:e], mask[:, s:e], readout=True)
            for m, (s, e) in zip(self.modalities, spans, strict=True)
        ]
        slots = torch.cat([torch.ones_like(presence[:, :1]), presence], 1)
        embedding, _ = self.combine(outs, slots)
        return FusionOutput(
            embedding=embedding,
            pooled=self.pooled(tokens),
            attention=attention,
            contributions={m: share[:, i] for i, m in enumerate(self.modalities)},
        )


class ChannelStackEncoder(nn.Module):
    """Stack co-registered volumes as channels and encode them with one shared encoder.

    ``encoder`` takes ``x`` (B, 2 * len(volumes), D, H, W) and returns ``Tokens``; channels
    are ``[vol_1, flag_1, vol_2, flag_2, ...]`` in sorted volume order. Forward keywords are
    what ``stack_volume_inputs`` builds: ``<name>`` (B, 1, D, H, W) and ``<name>_present`` (B,).
    """

    def __init__(self, volumes: Sequence[str], encoder: nn.Module) -> None:
        super().__init__()
        self.volumes = sorted(volumes)
        self.encoder = encoder
        self.out_dim: int = encoder.out_dim
        # One learned fill value per volume: the "constant volume" for absent inputs.
        self.missing_value = nn.Parameter(torch.zeros(len(self.volumes)))

    @property
    def in_channels(self) -> int:
        """Channels the wrapped encoder must accept."""
        return 2 * len(self.volumes)

    def forward(self, **inputs: torch.Tensor) -> Tokens:
        ref = next(inputs[v] for v in self.volumes if v in inputs)
        channels = []
        for i, v in enumerate(self.volumes):
            flag = inputs[f"{v}_present"].bool().view(-1, 1, 1, 1, 1)
            fill = self.missing_value[i].to(ref.dtype).expand_as(ref)
            vol = torch.where(flag, inputs[v], fill) if v in inputs else fill
            channels += [vol, flag.to(ref.dtype).expand_as(ref)]
        return self.encoder(x=torch.cat(channels, 1))


def stack_volume_inputs(
    batch: dict[str, dict[str, torch.Tensor]],
    present: dict[str, torch.Tensor],
    volumes: Sequence[str],
    name: str = "volumes",
    key: str = "x",
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Replace the named volume modalities of a batch by one stacked modality ``name``.

    Each ``batch[v][key]`` must be (B, 1, D, H, W) with the same size for all volumes; a volume
    absent from every row may be missing from ``batch``. ``present[name]`` is True where any
    of the volumes is present. Returns new dicts; the inputs are not modified.
    """
    found = [v for v in sorted(volumes) if v in batch]
    if not found:
        raise ConfigError(f"none of the volumes {sorted(volumes)} is in the batch")
    shapes = {v: tuple(batch[v][key].shape) for v in found}
    if len(set(shapes.values())) > 1:
        raise ConfigError(
            f"early channel stacking needs co-registered volumes of one size, got {shapes}; "
            "give the volume modalities the same spatial_size/spacing in their specs"
        )
    stacked: dict[str, torch.Tensor] = {v: batch[v][key] for v in found}
    b = stacked[found[0]].shape[0]
    device = stacked[found[0]].device
    for v in volumes:
        stacked[f"{v}_present"] = present.get(v, torch.zeros(b, dtype=torch.bool, device=device))
    any_present = torch.stack([stacked[f"{v}_present"].bool() for v in volumes], 1).any(1)
    new_batch = {m: inp for m, inp in batch.items() if m not in volumes}
    new_present = {m: p for m, p in present.items() if m not in volumes}
    new_batch[name], new_present[name] = stacked, any_present
    return new_batch, new_present


__all__ = ["ChannelStackEncoder", "EarlyFusion", "stack_volume_inputs"]
