"""Task heads, registered by name: ``binary``, ``multiclass``, ``multilabel``, ``contrastive``.

A head turns a ``FusionOutput`` into ``{"logits", "loss"}``; ``loss`` is present when labels
are given (contrastive: whenever two or more rows hold both modalities, since the pairing is
the supervision). Adding an objective means adding a head here, never another training loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusion.base import FusionOutput, check_options, presence_matrix, present_weights
from modalities.errors import ConfigError
from modalities.registry import Registry


class Head(nn.Module):
    """Base of all heads. ``modalities`` are those of the model, sorted."""

    def __init__(self, d_model: int, modalities: Sequence[str]) -> None:
        super().__init__()
        self.d_model = d_model
        self.modalities = sorted(modalities)

    def forward(
        self,
        out: FusionOutput,
        present: dict[str, torch.Tensor],
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class ClassificationHead(Head):
    """A small MLP (LayerNorm, Linear, GELU, Linear) on the fused embedding plus a loss;
    subclasses set ``n_out`` and the loss.

    Why not one linear layer: several strategies end in a pooled or averaged embedding, and a
    label that depends on an interaction (a CT finding together with a note finding) is not
    linear in such an average; one hidden layer after fusion lets every strategy express it
    (measured in docs/training.md, "Why fusion did not learn").
    Late fusion (``out.branches`` set): the same MLP scores each modality's branch and the
    logits are averaged over the modalities present in the row (so late fusion stays a
    combination of per-modality decisions).
    """

    n_out: int = 1

    def __init__(self, d_model: int, modalities: Sequence[str], n_out: int) -> None:
        super().__init__(d_model, modalities)
        self.n_out = n_out
        self.proj = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
            nn.Linear(d_model, n_out),
        )

    def logits(self, out: FusionOutput, present: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_out) logits of the fused embedding, or the present-averaged branch logits."""
        if out.branches is None:
            return self.proj(out.embedding)
        names = sorted(out.branches)
        per = torch.stack([self.proj(out.branches[m]) for m in names], 1)  # (B, M, n_out)
        w = present_weights(presence_matrix(names, present))
        return (per * w.unsqueeze(-1).to(per.dtype)).sum(1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(
        self,
        out: FusionOutput,
        present: dict[str, torch.Tensor],
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = self.finish(self.logits(out, present))
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = self.loss(logits.float(), labels)
        return result

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        """Shape the raw (B, n_out) logits (binary squeezes to (B,))."""
        return logits


def _weight(value: float | Sequence[float] | None, n: int, what: str) -> torch.Tensor | None:
    """Validate an optional per-output weight list (length ``n``) into a tensor."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() == 1 and n > 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ConfigError(f"{what} needs {n} value(s), got {t.numel()}; give one per output")
    return t


_HEADS: Registry[type[Head]] = Registry("head")
register_head = _HEADS.register


@register_head("binary")
class BinaryHead(ClassificationHead):
    """One logit per row; BCE with logits, optional ``pos_weight`` for class imbalance.

    Labels: (B,) 0/1 (any dtype). Logits: (B,).
    """

    def __init__(
        self, d_model: int, modalities: Sequence[str], *, pos_weight: float | None = None
    ) -> None:
        super().__init__(d_model, modalities, 1)
        self.register_buffer("pos_weight", _weight(pos_weight, 1, "pos_weight"))

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits, labels.float().view_as(logits), pos_weight=self.pos_weight
        )


@register_head("multiclass")
class MulticlassHead(ClassificationHead):
    """``num_classes`` logits; cross-entropy with optional ``class_weights``.

    Labels: (B,) class indices. Logits: (B, num_classes).
    """

    def __init__(
        self,
        d_model: int,
        modalities: Sequence[str],
        *,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"multiclass head needs num_classes >= 2, got {num_classes}")
        super().__init__(d_model, modalities, num_classes)
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", _weight(class_weights, num_classes, "class_weights"))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits,
            labels.long().view(-1),
            weight=self.class_weights,
            label_smoothing=self.label_smoothing,
        )


@register_head("multilabel")
class MultilabelHead(ClassificationHead):
    """One logit per label; BCE with logits averaged over rows and labels.

    ``labels`` (names) or ``num_labels`` sets the width; optional per-label ``pos_weight``.
    Labels: (B, L) 0/1. Logits: (B, L).
    """

    def __init__(
        self,
        d_model: int,
        modalities: Sequence[str],
        *,
        num_labels: int | None = None,
        labels: Sequence[str] | None = None,
        pos_weight: float | Sequence[float] | None = None,
    ) -> None:
        n = len(labels) if labels is not None else num_labels
        if not n or (labels is not None and num_labels is not None and num_labels != n):
            raise ConfigError(
                "multilabel head needs the label names (labels) or num_labels, and they must agree"
            )
        super().__init__(d_model, modalities, n)
        self.label_names = list(labels) if labels is not None else None
        self.register_buffer("pos_weight", _weight(pos_weight, n, "pos_weight"))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits, labels.float().view_as(logits), pos_weight=self.pos_weight
        )


@register_head("contrastive")
class ContrastiveHead(Head):
    """CLIP-style symmetric InfoNCE between two or more modality towers.

    Uses ``out.pooled`` (pre-fusion, so no tower sees another), projects each tower to a
    shared ``proj_dim`` space, L2-normalises, and scores pairs with a learnable temperature
    (``logit_scale``, initialised to 1/0.07, capped at 100 as in CLIP). ``towers`` (default:
    ``pair`` when given, else every modality of the model) are contrasted pairwise; the loss
    is the mean over tower pairs of the symmetric InfoNCE on rows where both are present.
    Outputs: ``logits`` (B, B) of the first pair (row i = tower 0 of sample i against tower 1
    of every sample), ``embeddings`` (B, T, proj_dim) in sorted tower order and
    ``tower_present`` (B, T) bool, which rows hold each tower. Labels are
    ignored: the pairing is the supervision.
    """

    def __init__(
        self,
        d_model: int,
        modalities: Sequence[str],
        *,
        pair: Sequence[str] | None = None,
        towers: Sequence[str] | None = None,
        proj_dim: int = 128,
        temperature: float = 0.07,
    ) -> None:
        super().__init__(d_model, modalities)
        what = "towers" if towers is not None else "pair"
        chosen = list(towers if towers is not None else pair if pair is not None
                      else self.modalities)
        size_ok = len(chosen) >= 2 if pair is None or towers is not None else len(chosen) == 2
        if not size_ok or len(set(chosen)) != len(chosen) or not set(chosen) <= set(
            self.modalities
        ):
            raise ConfigError(
                f"contrastive head needs distinct modalities of the model "
                f"({', '.join(self.modalities)}) as {what} (two for pair, two or more as "
                f"towers), got {chosen}"
            )
        self.pair = (chosen[0], chosen[1])
        self.towers = sorted(chosen)
        self.proj = nn.ModuleDict({m: nn.Linear(d_model, proj_dim) for m in self.towers})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def embed(self, out: FusionOutput, name: str) -> torch.Tensor:
        """Normalised shared-space embedding (B, proj_dim) of modality ``name``."""
        return F.normalize(self.proj[name](out.pooled[name]).float(), dim=-1)

    @staticmethod
    def _infonce(sim: torch.Tensor, both: torch.Tensor) -> torch.Tensor | None:
        idx = both.nonzero().squeeze(1)
        if idx.numel() < 2:
            return None
        sub = sim.index_select(0, idx).index_select(1, idx)
        target = torch.arange(sub.shape[0], device=sub.device)
        return (F.cross_entropy(sub, target) + F.cross_entropy(sub.T, target)) / 2

    def forward(
        self,
        out: FusionOutput,
        present: dict[str, torch.Tensor],
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        z = {m: self.embed(out, m) for m in self.towers}
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        a, b = self.pair
        logits = scale * z[a] @ z[b].T
        losses = []
        for i, m in enumerate(self.towers):
            for n in self.towers[i + 1:]:
                sim = logits if (m, n) == (a, b) else (
                    logits.T if (n, m) == (a, b) else scale * z[m] @ z[n].T)
                loss = self._infonce(sim, present[m].bool() & present[n].bool())
                if loss is not None:
                    losses.append(loss)
        # Nothing to contrast: keep the graph so the step still works.
        loss = torch.stack(losses).mean() if losses else logits.sum() * 0.0
        embeddings = torch.stack([z[m] for m in self.towers], 1)
        # Which rows hold each tower (B, T), in ``embeddings``' order: an absent tower's
        # vector comes from a masked placeholder and means nothing (Task.outputs drops it).
        tower_present = torch.stack([present[m].bool() for m in self.towers], 1)
        return {"logits": logits, "loss": loss, "embeddings": embeddings,
                "tower_present": tower_present}


def head_names() -> list[str]:
    """Names of all registered heads, sorted."""
    return _HEADS.names()


def create_head(name: str, d_model: int, modalities: Sequence[str], **kw: Any) -> Head:
    """Build head ``name``; unknown names or options raise a ``ClinfuseError``."""
    cls = _HEADS.get(name)
    check_options("head", name, cls, kw)
    try:
        return cls(d_model, modalities, **kw)
    except TypeError as e:  # a required option (e.g. num_classes) is missing
        raise ConfigError(f"head {name!r}: {e}; set it under head options") from None


EXPECTED_HEADS = ["binary", "contrastive", "multiclass", "multilabel"]
