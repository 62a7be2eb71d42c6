"""Cross-modal retrieval metrics (the contrastive task): Recall@K and median rank.

For two modalities A and B with L2-normalised embeddings of the same N patients, the query
A_i should retrieve B_i among all N candidates. ``rank`` is the 1-based position of the
true partner when candidates are sorted by cosine similarity (ties count against the model:
a candidate scoring equal to the partner ranks before it). Recall@K = share of queries with
rank <= K; chance is K / N. Both directions (A->B, B->A) are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

RECALL_AT = (1, 5, 10)


def retrieval_ranks(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1-based rank of gallery row i for query row i, by dot product (N,)."""
    q = np.asarray(query, dtype=float)
    g = np.asarray(gallery, dtype=float)
    if q.shape != g.shape or q.ndim != 2:
        raise ValueError(f"query and gallery must be (N, D) alike; got {q.shape}, {g.shape}")
    sim = q @ g.T
    true = np.diagonal(sim)[:, None]
    others = ~np.eye(len(q), dtype=bool)
    return 1 + ((sim >= true) & others).sum(1)


def _direction(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    n = ranks.size
    out = {f"recall@{k}": float((ranks <= k).mean()) if n else np.nan for k in ks}
    out["median_rank"] = float(np.median(ranks)) if n else np.nan
    return out


def retrieval_metrics(
    embeddings: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    ks: Sequence[int] = RECALL_AT,
) -> dict[str, float]:
    """Recall@K and median rank for every ordered modality pair, plus their means.

    ``embeddings[m]``: (N, D) normalised; ``present[m]``: (N,) bool. A pair is scored on the
    rows where both modalities are present. Keys: ``<a>_to_<b>/recall@K``,
    ``<a>_to_<b>/median_rank``, ``recall@K`` / ``median_rank`` (mean over directions) and
    ``n`` (rows of the first pair).
    """
    names = sorted(embeddings)
    out: dict[str, float] = {}
    per: dict[str, list[float]] = {}
    n = 0
    for a, b in combinations(names, 2):
        both = np.asarray(present[a], bool) & np.asarray(present[b], bool)
        n = n or int(both.sum())
        ea, eb = np.asarray(embeddings[a])[both], np.asarray(embeddings[b])[both]
        for q, g, key in ((ea, eb, f"{a}_to_{b}"), (eb, ea, f"{b}_to_{a}")):
            for metric, v in _direction(retrieval_ranks(q, g), ks).items():
                out[f"{key}/{metric}"] = v
                per.setdefault(metric, []).append(v)
    for metric, values in per.items():
        out[metric] = float(np.nanmean(values)) if not np.isnan(values).all() else np.nan
    out["n"] = float(n)
    return out
