"""Score distribution and drift of a scoring run, streamed in fixed memory.

``ScoreStats`` accumulates, per probability column, the mean, a fine 1000-bin histogram
(quantiles to 5e-4) and the positive rate, plus counts over the reference's bins when a
drift reference (``fusion.reference.score_reference``, stored with the model) is given.
``drift`` compares presence rates, the prior and the score histogram (PSI) with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from fusion.reference import score_histogram

HIST_BINS = 1000  # resolution of the streamed quantiles (1e-3 on [0, 1])
PSI_EPS = 1e-4  # floor for empty bins in the PSI so log() stays finite
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index of two histograms over the same bins (counts or shares).

    sum((a - e) * ln(a / e)) over bins, with empty bins floored at ``eps``. Rules of thumb:
    < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.sum() <= 0 or a.sum() <= 0:
        return math.nan
    e = np.clip(e / e.sum(), eps, None)
    a = np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _positive(task: str, probs: np.ndarray, threshold: float) -> np.ndarray:
    """Per row and column: 1 where the model decides positive (multiclass: argmax class)."""
    if task == "multiclass":
        return np.eye(probs.shape[1])[probs.argmax(1)] if len(probs) else probs
    return (probs >= threshold).astype(float)


def reference_edges(reference: dict[str, Any] | None) -> np.ndarray | None:
    """Bin edges of the reference's score histogram, if it has one."""
    ref = reference or {}
    if "score_histogram" not in ref:
        return None
    return np.asarray(ref["score_histogram"]["edges"], dtype=float)


class ScoreStats:
    """Streamed distribution of probability columns: mean, histogram quantiles, rates."""

    def __init__(self, columns: list[str], ref_edges: np.ndarray | None) -> None:
        self.columns = columns
        self.n = 0
        self.sums = np.zeros(len(columns))
        self.positive = np.zeros(len(columns))
        self.fine = np.zeros((len(columns), HIST_BINS), dtype=np.int64)
        self.ref_edges = ref_edges
        self.ref = (np.zeros((len(columns), len(ref_edges) - 1), dtype=np.int64)
                    if ref_edges is not None else None)

    def add(self, probs: np.ndarray, positive: np.ndarray) -> None:
        self.n += len(probs)
        self.sums += probs.sum(0)
        self.positive += positive.sum(0)
        for k in range(probs.shape[1]):
            idx = np.clip((probs[:, k] * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
            self.fine[k] += np.bincount(idx, minlength=HIST_BINS)
        if self.ref is not None:
            self.ref += score_histogram(probs, self.ref_edges)

    def _quantile(self, k: int, q: float) -> float:
        cum = np.cumsum(self.fine[k])
        i = int(np.searchsorted(cum, q * cum[-1], side="left"))
        return (min(i, HIST_BINS - 1) + 0.5) / HIST_BINS  # bin centre: error <= 0.5e-3

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        for k, c in enumerate(self.columns):
            if self.n == 0:
                out[c] = {}
                continue
            out[c] = {
                "mean": float(self.sums[k] / self.n),
                "quantiles": {str(q): self._quantile(k, q) for q in QUANTILES},
                "positive_rate": float(self.positive[k] / self.n),
            }
        return out


def distribution(
    rows: Iterable[pa.Table], current: set[tuple[str, str]], prob_cols: list[str],
    task: str, threshold: float, ref_edges: np.ndarray | None,
) -> ScoreStats:
    """One streamed pass over a version's stored rows, keeping the current ones only.

    ``rows``: tables with ``patient``, ``input_hash`` and ``prob_cols`` (one model version).
    """
    stats = ScoreStats(prob_cols, ref_edges)
    for t in rows:
        d = t.to_pydict()
        keep = np.array([(p, h) in current for p, h in
                         zip(d["patient"], d["input_hash"], strict=True)], dtype=bool)
        if not keep.any():
            continue
        probs = np.stack([np.asarray(d[c], dtype=float) for c in prob_cols], 1)[keep]
        stats.add(probs, _positive(task, probs, threshold))
    return stats


def drift(
    modalities: list[str], presence: dict[str, int], eligible: int, prior: Any,
    stats: ScoreStats, reference: dict[str, Any] | None,
) -> dict[str, Any]:
    """Presence-rate differences, prior vs mean score, and PSI vs a reference histogram.

    ``presence``: eligible patients per modality; ``prior``: the model's training prior,
    used when the reference has none.
    """
    ref = dict(reference or {})
    n = max(eligible, 1)
    out: dict[str, Any] = {"presence": {}}
    for m in modalities:
        cur = presence[m] / n if eligible else math.nan
        entry = {"current": cur}
        if m in ref.get("presence", {}):
            entry |= {"reference": float(ref["presence"][m]),
                      "difference": cur - float(ref["presence"][m])}
        out["presence"][m] = entry
    prior = np.atleast_1d(np.asarray(ref.get("prior", prior), dtype=float))
    means = [stats.sums[k] / stats.n if stats.n else math.nan for k in range(len(stats.columns))]
    out["prior"] = {
        c: {"reference": float(prior[k]) if k < len(prior) else math.nan, "mean_score": means[k],
            "difference": means[k] - float(prior[k]) if k < len(prior) else math.nan}
        for k, c in enumerate(stats.columns)
    }
    if stats.ref is not None:
        counts = np.atleast_2d(np.asarray(ref["score_histogram"]["counts"], dtype=float))
        out["psi"] = {c: psi(counts[k], stats.ref[k]) if k < len(counts) else math.nan
                      for k, c in enumerate(stats.columns)}
    return out
