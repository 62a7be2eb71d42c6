"""Retrieval (CLIP-style contrastive learning): align two or more towers with InfoNCE.

The recipe's task is ``retrieval``; ``contrastive`` (its earlier name) is an alias of the
same class. No labels: the pairing of a patient's modalities is the supervision. The
model's output per row is one normalised embedding per tower (``ContrastiveHead``'s
``embeddings``); the metrics are Recall@1/5/10 and the median rank of the true partner
among the held-out split, for every ordered modality pair (image->text, text->image, ...),
plus their means, each with a bootstrap CI over queries.
Early stopping watches the mean Recall@1. With ``cohort.zero_shot`` the label column is
parsed for zero-shot evaluation only (``fusion.zero_shot``); training never reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.metrics import RECALL_AT, MetricFn, retrieval_metrics
from fusion.tasks.base import Task, register_task, with_presence
from fusion.zero_shot import check_zero_shot, zero_shot_labels
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError


def embedding_column(tower: Any) -> str:
    """The output column holding ``tower``'s embeddings (pyfunc, scoring)."""
    return f"embedding_{tower}"


def embedding_cells(emb: np.ndarray) -> list[list[float] | None]:
    """(N, D) embeddings -> per-row lists of floats; None for a NaN (absent) row."""
    return [None if np.isnan(row).any() else row.tolist() for row in np.asarray(emb)]


def _row_shape(template: Any) -> tuple[int, ...]:
    """One row's (T, D) output shape from a template array or a shape tuple."""
    if isinstance(template, tuple) and all(isinstance(x, int) for x in template):
        return template
    arr = np.asarray(template, dtype=float)
    if arr.ndim != 2:
        raise ConfigError(
            "a contrastive model gives rows without its modalities NaN embeddings and needs "
            "their (towers, dim) shape; build a Predictor from the model's saved config"
        )
    return tuple(arr.shape)


_NO_SCORES = (
    "a contrastive model outputs embeddings, not probabilities: it has no probability "
    "columns or decisions (batch scoring writes its embeddings and top-k neighbours)"
)


@register_task("retrieval")
@register_task("contrastive")  # the earlier name: recipes that use it keep working
class ContrastiveTask(Task):
    """Towers: every modality of the model (or the head's ``towers``/``pair`` option)."""

    head = "contrastive"
    monitor = "recall@1"
    scores = False
    unimodal = False
    zero_shot = True

    def check_cohort(self, cfg: CohortConfig) -> None:
        check_zero_shot(cfg)

    def label_columns(self, cfg: CohortConfig) -> list[str]:
        return []  # training reads no label (zero-shot evaluation reads cohort.labels)

    def parse_labels(self, row: Mapping[str, str], cfg: CohortConfig) -> list[float] | None:
        """None (labels ignored), or with ``cohort.zero_shot`` the label's class index."""
        return zero_shot_labels(row, cfg)

    def label_array(self, rows: pd.DataFrame, cfg: CohortConfig) -> np.ndarray | None:
        return None

    def batch_labels(self, labels: np.ndarray) -> torch.Tensor | None:
        return None

    def label_names(self, cfg: CohortConfig) -> list[str] | None:
        return None

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise ConfigError(_NO_SCORES)

    def outputs(self, model_out: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, D) embeddings, NaN for a tower the row lacks (it was never encoded: the
        head's vector for it comes from a masked placeholder). ``tower_present`` is the
        head's (B, T) mask, in the same tower order, whatever subset the towers are."""
        emb = model_out["embeddings"].float()
        absent = ~model_out["tower_present"].bool()
        return emb.masked_fill(absent.unsqueeze(-1).to(emb.device), float("nan"))

    def prior(self, y_train: np.ndarray | None) -> None:
        return None

    def fill_missing(
        self, outputs: np.ndarray | None, mask: np.ndarray, prior: Any, dtype: Any = float
    ) -> np.ndarray:
        """Embeddings where ``mask``, NaN rows elsewhere (no embedding without an input).

        ``prior`` is the (T, D) shape of one row's output, or an array of that shape (the
        predictor's NaN template): it shapes the rows when ``outputs`` is None.
        """
        if outputs is not None and np.asarray(outputs).ndim == 3:
            shape = np.asarray(outputs).shape[1:]
        else:
            shape = _row_shape(prior)
        full = np.full((len(mask), *shape), np.nan, dtype=dtype)
        if outputs is not None and mask.any():
            full[mask] = np.asarray(outputs, dtype=dtype).reshape(int(mask.sum()), *shape)
        return full

    def decide(self, probs: np.ndarray, threshold: float, names: Sequence[str]) -> Any:
        raise ConfigError(_NO_SCORES)

    def probability_columns(
        self, label_names: Sequence[Any] | None, n: int
    ) -> tuple[list[str], list[str]]:
        raise ConfigError(_NO_SCORES)

    def output_frame(
        self, index: pd.Index, probs: np.ndarray, label_names: Sequence[Any] | None,
        threshold: float,
    ) -> pd.DataFrame:
        """One ``embedding_<tower>`` column per tower: a list of D floats, or None where the
        row lacks that tower (``label_names``: the towers, in the order of ``probs``)."""
        emb = np.asarray(probs, dtype=float)
        if emb.ndim != 3:
            emb = emb.reshape(len(index), len(label_names or ()), -1)
        names = list(label_names or range(emb.shape[1]))
        out = pd.DataFrame(index=index)
        for k, m in enumerate(names):
            out[embedding_column(m)] = embedding_cells(emb[:, k])
        return out

    def prediction_table(
        self, patients: Sequence[str], probs: np.ndarray, labels: np.ndarray | None,
        threshold: float, present: Mapping[str, np.ndarray],
    ) -> pd.DataFrame:
        """Patients and presence only: embeddings are not a table's business."""
        return with_presence(pd.DataFrame({"patient": list(patients)}), present)

    def metric_fn(self, threshold: Any, label_names: Sequence[str] | None) -> MetricFn:
        raise NotImplementedError("contrastive metrics need presence; use evaluate")

    def evaluate(
        self,
        y_true: Any,
        prob: Any,
        threshold: float | Sequence[float] | None = None,
        groups: Mapping[str, Any] | None = None,
        n_boot: int = 1000,
        alpha: float = 0.05,
        seed: int = 0,
        label_names: Sequence[str] | None = None,
        present: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Recall@K and median rank per ordered tower pair (``fusion.metrics.retrieval``).

        ``prob``: (N, T, D) embeddings, towers in sorted order; ``label_names``: the tower
        names (default: the sorted ``present`` keys). With ``n_boot > 0`` each Recall@K and
        median rank gets a ``1 - alpha`` percentile-bootstrap CI over queries (rows resampled,
        gallery fixed; ``seed``), keys ``<metric>_ci_low/_ci_high`` as for classifiers.
        No subgroups (``groups`` is ignored): a subgroup's gallery would be a different task.
        """
        emb = np.asarray(prob, dtype=float)
        names = sorted(label_names) if label_names else sorted(present or {})
        if emb.ndim != 3 or emb.shape[1] != len(names):
            raise ValueError(f"contrastive outputs must be (N, {len(names)} towers, D); "
                             f"got {emb.shape}")
        pres = {m: (np.asarray(present[m], bool) if present and m in present
                    else np.ones(len(emb), bool)) & ~np.isnan(emb[:, k]).any(1)
                for k, m in enumerate(names)}
        return retrieval_metrics({m: emb[:, k] for k, m in enumerate(names)}, pres, RECALL_AT,
                                 n_boot=n_boot, alpha=alpha, seed=seed)
