"""The drift reference a trained model carries: its test-split score histogram and rates.

Training stores ``score_reference(...)`` in the model config; batch scoring
(``scoring.drift``) compares a cohort's scores with it. Both sides bin scores with
``score_histogram`` so the PSI compares like with like. A pure function of predictions:
the model core computes it without importing scoring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REFERENCE_BINS = 10  # equal-width bins on [0, 1] of the stored score histogram


def score_histogram(probs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(K, bins) counts of each column of ``probs`` (N, K) over ``edges`` (scores clipped
    to [0, 1], so an edge value lands in the first or last bin)."""
    p = np.asarray(probs, dtype=float)
    p = p[:, None] if p.ndim == 1 else p
    return np.stack([np.histogram(np.clip(p[:, k], 0.0, 1.0), edges)[0]
                     for k in range(p.shape[1])]).astype(np.int64)


def score_reference(
    probabilities: np.ndarray, presence: dict[str, float] | None = None,
    prior: float | list[float] | None = None, bins: int = REFERENCE_BINS,
) -> dict[str, Any]:
    """A drift reference from training-time predictions (e.g. the test split's).

    ``probabilities``: (N,) or (N, K); the histogram uses ``bins`` equal bins on [0, 1].
    """
    p = np.asarray(probabilities, dtype=float).reshape(len(probabilities), -1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = score_histogram(p, edges).tolist()
    ref: dict[str, Any] = {"score_histogram": {"edges": edges.tolist(), "counts": counts}}
    if presence is not None:
        ref["presence"] = dict(presence)
    if prior is not None:
        ref["prior"] = prior
    return ref
