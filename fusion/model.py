"""``FusionModel``: encoders -> per-modality projection -> fusion strategy -> head.

Missing-modality semantics (see docs/fusion.md):
* ``present[name]`` (B,) bool says which rows hold modality ``name``. An encoder runs only on
  the rows where its modality is present (no wasted compute, no batch-norm statistics from
  placeholder inputs); absent rows get zero values with an all-False token mask, so no
  strategy can read them, and every strategy also receives ``present`` explicitly.
* Padded tokens (mask False) are zeroed after projection and masked in every attention and
  pooling step, so their values never reach the output.
* In training, ``modality_dropout`` drops each present modality of a row with that
  probability, re-adding one at random if a row would lose all of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusion.base import Fusion, FusionOutput, create_fusion
from fusion.config import ModelConfig, StackConfig
from fusion.heads import Head, create_head
from fusion.strategies.early import ChannelStackEncoder, stack_volume_inputs
from modalities.base import Tokens
from modalities.errors import ConfigError

Batch = dict[str, dict[str, Any]]


class TokenProjection(nn.Module):
    """Linear map of one modality's tokens to ``d_model``, plus a learned modality-type
    embedding and optional learned positions; masked tokens are zeroed."""

    def __init__(self, in_dim: int, d_model: int, max_positions: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, d_model)
        self.type_embedding = nn.Parameter(torch.randn(d_model) * 0.02)
        self.positions = nn.Embedding(max_positions, d_model) if max_positions else None

    def forward(self, tokens: Tokens) -> Tokens:
        x = self.linear(tokens.values) + self.type_embedding.to(tokens.values.dtype)
        if self.positions is not None:
            n = x.shape[1]
            if n > self.positions.num_embeddings:
                raise ConfigError(
                    f"encoder gave {n} tokens but max_positions is "
                    f"{self.positions.num_embeddings}; raise max_positions in the model config"
                )
            x = x + self.positions.weight[:n].to(x.dtype)
        mask = tokens.mask.bool()
        return Tokens(torch.where(mask.unsqueeze(-1), x, 0.0), mask)


def drop_modalities(present: dict[str, torch.Tensor], rate: float) -> dict[str, torch.Tensor]:
    """Randomly mark present modalities absent with probability ``rate``, per row.

    A row never loses all of its modalities: if every present one was dropped, one of them
    (chosen uniformly) is kept. Rows and modalities already absent stay absent.
    """
    names = sorted(present)
    if rate <= 0 or len(names) < 2:
        return present
    p = torch.stack([present[m].bool() for m in names], 1)  # (B, M)
    kept = p & (torch.rand(p.shape, device=p.device) >= rate)
    lost_all = p.any(1) & ~kept.any(1)
    pick = torch.rand(p.shape, device=p.device).masked_fill(~p, -1.0).argmax(1)
    kept |= nn.functional.one_hot(pick, len(names)).bool() & lost_all.unsqueeze(1)
    return {m: kept[:, i] for i, m in enumerate(names)}


class FusionModel(nn.Module):
    """Encoders (one per modality) + projections + a fusion strategy + a head.

    ``forward(batch, present, labels=None)`` returns ``logits``, ``embedding``, ``attention``,
    ``contributions``, ``present`` (after modality dropout) and ``loss`` when labels are given
    (contrastive heads: always). A unimodal model is this class with one encoder.
    ``encoder_dims`` gives each encoder's token width (default: the encoder's ``out_dim``).
    ``stack`` = ``(name, volumes)``: the batch's ``volumes`` are channel-stacked into modality
    ``name`` before encoding (its encoder is a ``ChannelStackEncoder``).
    """

    def __init__(
        self,
        encoders: nn.ModuleDict | dict[str, nn.Module],
        fusion: Fusion,
        head: Head,
        encoder_dims: dict[str, int] | None = None,
        modality_dropout: float = 0.0,
        max_positions: int = 0,
        stack: tuple[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.stack = stack
        names = sorted(encoders)
        if names != fusion.modalities or names != head.modalities:
            raise ConfigError(
                f"encoders ({', '.join(names)}), fusion ({', '.join(fusion.modalities)}) and "
                f"head ({', '.join(head.modalities)}) must cover the same modalities"
            )
        dims = {m: _encoder_dim(m, encoders[m], encoder_dims) for m in names}
        # Sorted registration makes parameter order independent of the caller's dict order.
        self.encoders = nn.ModuleDict({m: encoders[m] for m in names})
        self.projections = nn.ModuleDict(
            {m: TokenProjection(dims[m], fusion.d_model, max_positions) for m in names}
        )
        self.fusion = fusion
        self.head = head
        self.modality_dropout = modality_dropout

    @property
    def modalities(self) -> list[str]:
        """The model's modality names, sorted."""
        return list(self.encoders)

    def encode(self, batch: Batch, present: dict[str, torch.Tensor]) -> dict[str, Tokens]:
        """Projected tokens of every modality; absent rows are zero and fully masked."""
        b = next(iter(present.values())).shape[0]
        out: dict[str, Tokens | None] = {}
        for m in self.modalities:
            rows = present[m].bool()
            n_rows = int(rows.sum())  # one host sync per modality; selects the rows to encode
            if n_rows == 0:
                out[m] = None
                continue
            inputs = batch[m]
            idx = None
            if n_rows < b:
                idx = rows.nonzero().squeeze(1)
                inputs = {
                    k: v.index_select(0, idx) if torch.is_tensor(v) else v
                    for k, v in inputs.items()
                }
            tok = self.projections[m](self.encoders[m](**inputs))
            if idx is not None:
                values = tok.values.new_zeros(b, *tok.values.shape[1:]).index_copy(
                    0, idx, tok.values
                )
                mask = tok.mask.new_zeros(b, tok.mask.shape[1]).index_copy(0, idx, tok.mask)
                tok = Tokens(values, mask)
            out[m] = tok
        ref = next((t for t in out.values() if t is not None), None)
        if ref is None:
            raise ValueError("no modality is present in any row of the batch")
        d = self.fusion.d_model
        for m, t in out.items():
            if t is None:  # absent from the whole batch: one masked placeholder token
                out[m] = Tokens(
                    ref.values.new_zeros(b, 1, d),
                    torch.zeros(b, 1, dtype=torch.bool, device=ref.values.device),
                )
        return out  # type: ignore[return-value]

    def forward(
        self,
        batch: Batch,
        present: dict[str, torch.Tensor],
        labels: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        if self.stack is not None:
            batch, present = self._stack_inputs(batch, present)
        present = self._check_present(batch, present)
        if self.training:
            present = drop_modalities(present, self.modality_dropout)
        tokens = self.encode(batch, present)
        fused: FusionOutput = self.fusion(tokens, present)
        result: dict[str, Any] = dict(self.head(fused, present, labels))
        result.update(
            embedding=fused.embedding,
            attention=fused.attention,
            contributions=fused.contributions,
            present=present,
        )
        return result

    def _stack_inputs(
        self, batch: Batch, present: dict[str, torch.Tensor]
    ) -> tuple[Batch, dict[str, torch.Tensor]]:
        """Replace the stacked volumes by their stack (absent when no volume is in the batch)."""
        name, volumes = self.stack  # type: ignore[misc]
        if any(v in batch for v in volumes):
            return stack_volume_inputs(batch, present, volumes, name)
        ref = next(iter(present.values()))
        present = {m: p for m, p in present.items() if m not in volumes}
        present[name] = torch.zeros_like(ref, dtype=torch.bool)
        return {m: x for m, x in batch.items() if m not in volumes}, present

    def _check_present(
        self, batch: Batch, present: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Fill modalities missing from ``present`` as absent; reject inconsistent input."""
        if not present:
            raise ValueError("present masks are required (one BoolTensor(B) per modality)")
        ref = next(iter(present.values()))
        full = {}
        for m in self.modalities:
            p = present.get(m)
            if p is None:
                if m in batch:
                    raise ValueError(f"batch holds modality {m!r} but present[{m!r}] is missing")
                p = torch.zeros_like(ref, dtype=torch.bool)
            full[m] = p.bool()
        if not torch.stack(list(full.values()), 1).any(1).all():
            raise ValueError(
                "a row has no modality present; drop such rows when building the cohort"
            )
        return full


def _encoder_dim(name: str, encoder: nn.Module, dims: dict[str, int] | None) -> int:
    """Token width of an encoder: ``dims[name]`` or the encoder's ``out_dim``."""
    if dims and name in dims:
        return int(dims[name])
    dim = getattr(encoder, "out_dim", None)
    if not isinstance(dim, int):
        raise ConfigError(
            f"encoder {name!r} has no integer out_dim; give its token width in encoder_dims"
        )
    return dim


def build_model(
    cfg: ModelConfig,
    encoders: dict[str, nn.Module],
    encoder_dims: dict[str, int] | None = None,
) -> FusionModel:
    """Create a ``FusionModel`` from config, looking strategy and head up by name."""
    encoders, stack = _stack_encoders(cfg.stack, encoders)
    names = sorted(encoders)
    fusion = create_fusion(
        cfg.fusion.name,
        cfg.d_model,
        names,
        layers=cfg.fusion.layers,
        heads=cfg.fusion.heads,
        dropout=cfg.dropout,
        pooling=cfg.fusion.pooling,
        **cfg.fusion.options,
    )
    head = create_head(cfg.head.name, cfg.d_model, names, **cfg.head.options)
    return FusionModel(
        nn.ModuleDict(encoders),
        fusion,
        head,
        encoder_dims=encoder_dims,
        modality_dropout=cfg.modality_dropout,
        max_positions=cfg.max_positions,
        stack=stack,
    )


def _stack_encoders(
    cfg: StackConfig | None, encoders: dict[str, nn.Module]
) -> tuple[dict[str, nn.Module], tuple[str, list[str]] | None]:
    """Swap the encoders of ``cfg.modalities`` for one ``ChannelStackEncoder``.

    Only the stack's modalities that the model has are stacked; with fewer than two (a
    unimodal baseline) each keeps its own encoder, so a baseline is the same model with one
    modality.
    """
    if cfg is None:
        return encoders, None
    volumes = sorted(m for m in cfg.modalities if m in encoders)
    if len(volumes) < 2:
        return encoders, None
    if cfg.name in encoders:
        raise ConfigError(f"model.stack.name {cfg.name!r} is already a modality; rename it")
    from modalities.volume_encoders import VolumeEncoderConfig, build_volume_encoder

    try:
        vcfg = VolumeEncoderConfig.model_validate(cfg.encoder)
    except ValueError as err:
        raise ConfigError(f"model.stack.encoder: {err}".replace("\n", " ")) from None
    shared = build_volume_encoder(vcfg, in_channels=2 * len(volumes))
    out = {m: e for m, e in encoders.items() if m not in volumes}
    out[cfg.name] = ChannelStackEncoder(volumes, shared)
    return out, (cfg.name, volumes)
