"""The fusion contract: ``Fusion`` strategies, their output, and the strategy registry.

A strategy receives the projected tokens of every modality the model was built with
(``dict[str, Tokens]``, all ``d_model`` wide, absent rows fully masked) and the presence masks
``present[name]: BoolTensor(B)``. It iterates modalities in sorted order, so the insertion
order of the dicts never matters, and returns a ``FusionOutput``.

Adding a strategy means one new file under ``fusion/strategies/`` with one
``@register_fusion("name")`` class; the registry imports that package's modules on first
lookup, and plugins add strategies through the ``clinfuse.fusion`` entry-point group.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fusion.layers import MaskedBatchNorm
from modalities.base import Tokens
from modalities.errors import ConfigError
from modalities.registry import FUSION_GROUP, Registry, builtin_modules


@dataclass
class FusionOutput:
    """What a strategy returns.

    ``embedding`` (B, d): the fused representation a head scores.
    ``pooled``: per-modality (B, d) masked means of the projected tokens, computed before any
    cross-modal interaction (contrastive heads need embeddings that do not see the other side).
    ``branches``: late fusion only; per-modality decision features. When set, a classification
    head scores each branch and averages the logits over the present modalities of each row.
    ``attention``: explainability, e.g. ``"ct<-note"`` -> (B, layers, N_ct, N_note) weights.
    ``contributions``: per-modality (B,) scores, zero for absent modalities, summing to 1 over
    the present ones (what each strategy measures is documented on the strategy).
    """

    embedding: torch.Tensor
    pooled: dict[str, torch.Tensor]
    branches: dict[str, torch.Tensor] | None = None
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    contributions: dict[str, torch.Tensor] = field(default_factory=dict)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, N, D) over tokens where ``mask`` (B, N) is True; zeros if none."""
    return Tokens(values, mask).pooled()


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of ``values`` (B, N, D) over tokens where ``mask`` (B, N) is True; zeros if none."""
    filled = values.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))


POOLINGS = ("max", "mean")


def pool_tokens(values: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """One (B, D) vector per row from (B, N, D) tokens: masked ``max`` or ``mean``."""
    return masked_max(values, mask) if how == "max" else masked_mean(values, mask)


def presence_matrix(names: Sequence[str], present: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stack presence masks into (B, M) bool, columns in the order of ``names``."""
    return torch.stack([present[m].bool() for m in names], dim=1)


def present_weights(presence: torch.Tensor) -> torch.Tensor:
    """(B, M) bool -> (B, M) float weights: 1/n_present for present columns, 0 for absent."""
    w = presence.float()
    return w / w.sum(1, keepdim=True).clamp_min(1.0)


def weighted_sum(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Combine (B, M, d) per-modality features with (B, M) weights -> (B, d)."""
    return (stacked * weights.unsqueeze(-1).to(stacked.dtype)).sum(1)


class Fusion(nn.Module):
    """Base of all strategies. ``modalities`` are stored sorted; subclasses implement forward.

    The common options (``layers``, ``heads``, ``dropout``) are accepted by every strategy so
    one config shape builds any of them; strategies without layers ignore them.
    """

    READOUT_POOLING = False

    def __init__(
        self,
        d_model: int,
        modalities: Sequence[str],
        *,
        layers: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
        pooling: str = "max",
    ) -> None:
        super().__init__()
        if not modalities:
            raise ConfigError(f"{type(self).__name__} needs at least one modality")
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.d_model = d_model
        self.modalities: list[str] = sorted(modalities)
        self.layers, self.heads, self.dropout = layers, heads, dropout
        self.pooling = pooling
        self.pool_norm = nn.ModuleDict({m: MaskedBatchNorm(d_model) for m in self.modalities})
        # Strategies that pool after their fusion layers set READOUT_POOLING (own statistics).
        if self.READOUT_POOLING:
            self.out_norm = nn.ModuleDict({m: MaskedBatchNorm(d_model) for m in self.modalities})

    def pool(
        self, name: str, values: torch.Tensor, mask: torch.Tensor, readout: bool = False
    ) -> torch.Tensor:
        """Modality ``name``'s token set as one vector (``pooling``: masked max or mean),
        standardised across the patients that have it (``MaskedBatchNorm``). ``readout``
        pools tokens *after* fusion layers, which have their own statistics (``out_norm``),
        so the running statistics of the encoders' tokens are not mixed with them.

        Why max by default: a finding is local (a lesion in one of many CT tokens, a phrase
        in one of a note's chunks). A mean over tokens dilutes it below what the fusion layers
        can pick up before the encoder has learned it; a max keeps it visible from the first
        step (linear-probe AUROC of a random tiny CNN for the synthetic lesion: mean 0.55,
        max 0.90; docs/training.md).
        """
        norm = self.out_norm[name] if readout else self.pool_norm[name]
        return norm(pool_tokens(values, mask, self.pooling), mask.any(1))

    def pooled(self, tokens: dict[str, Tokens]) -> dict[str, torch.Tensor]:
        """Per-modality pre-fusion pooled tokens (``FusionOutput.pooled``)."""
        return {m: self.pool(m, tokens[m].values, tokens[m].mask) for m in self.modalities}

    def forward(
        self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]
    ) -> FusionOutput:  # pragma: no cover - abstract
        raise NotImplementedError


_FUSIONS: Registry[type[Fusion]] = Registry(
    "fusion strategy",
    builtins=lambda: builtin_modules("fusion.strategies"),
    group=FUSION_GROUP,
)
register_fusion = _FUSIONS.register


def fusion_names() -> list[str]:
    """Names of all fusion strategies (built-in and declared by plugins), sorted."""
    return _FUSIONS.names()


def builtin_fusion_names() -> list[str]:
    """Names of the strategies in ``fusion/strategies/``, sorted (no plugin imported)."""
    return _FUSIONS.builtin_names()


def check_options(kind: str, name: str, cls: type, options: dict[str, Any]) -> None:
    """Raise ``ConfigError`` naming any option ``cls.__init__`` (or its bases) does not take."""
    accepted: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        accepted |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"{kind} {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(sorted(accepted)) or 'none'}"
        )


def create_fusion(name: str, d_model: int, modalities: Sequence[str], **kw: Any) -> Fusion:
    """Build strategy ``name`` for ``modalities``; unknown names/options are ``ClinfuseError``s."""
    cls = _FUSIONS.get(name)
    check_options("fusion strategy", name, cls, kw)
    return cls(d_model, modalities, **kw)
