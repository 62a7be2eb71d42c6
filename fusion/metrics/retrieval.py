"""Cross-modal retrieval metrics (the retrieval task): Recall@K and median rank.

For two modalities A and B with L2-normalised embeddings of the same N patients, the query
A_i should retrieve B_i among all N candidates. ``rank`` is the 1-based position of the
true partner when candidates are sorted by cosine similarity. Recall@K = share of queries
with rank <= K; chance is K / N. Both directions (A->B, B->A) are reported.

Duplicates are answers, not rivals: when two rows carry the same content (two samples with
the same caption text: the same embedding), no model can tell their partners apart, and
counting one against the other would cap Recall@1 below 1 for a perfect model. So a
candidate B_j is *equivalent* to the partner B_i when B_j's embedding equals B_i's (the
gallery holds the partner's duplicate) or A_j's equals A_i's (the query has a duplicate,
whose partner is as right an answer). The rank is that of the best-scoring equivalent
candidate among the others; ties with a *different* candidate still count against the model
(a candidate scoring equal to it ranks before it). Embeddings are "equal" when they lie
within ``SAME_TOL`` (Euclidean), which absorbs float rounding that depends on the batch.

Caveat: equality is judged on embeddings, so a collapsed tower (every row the same vector)
would make every candidate "the partner". ``<m>/duplicate_share`` (share of a tower's rows
with an equal twin) exposes that: it should be close to the share of repeated inputs (0
for images, the share of repeated caption texts for captions); near 1 means collapse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

RECALL_AT = (1, 5, 10)
SAME_TOL = 1e-5  # Euclidean distance under which two embeddings count as the same content


def same_rows(x: np.ndarray, tol: float = SAME_TOL) -> np.ndarray:
    """(N, N) bool: rows i and j of ``x`` (N, D) are the same embedding (within ``tol``)."""
    gram = x @ x.T
    sq = np.diagonal(gram)
    dist2 = sq[:, None] + sq[None, :] - 2 * gram
    return dist2 <= tol**2


def retrieval_ranks(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1-based rank of gallery row i (or an equivalent row) for query row i (N,).

    Scores are dot products; equivalent rows (module docstring) are not rivals, and the best
    of them is the partner's score. Other rows scoring >= that score rank before it.
    """
    q = np.asarray(query, dtype=float)
    g = np.asarray(gallery, dtype=float)
    if q.shape != g.shape or q.ndim != 2:
        raise ValueError(f"query and gallery must be (N, D) alike; got {q.shape}, {g.shape}")
    sim = q @ g.T
    equivalent = same_rows(g) | same_rows(q) | np.eye(len(q), dtype=bool)
    true = np.where(equivalent, sim, -np.inf).max(1, keepdims=True)
    return 1 + ((sim >= true) & ~equivalent).sum(1)


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
    ``<a>_to_<b>/median_rank``, ``recall@K`` / ``median_rank`` (mean over directions),
    ``<m>/duplicate_share`` per tower (rows present) and ``n`` (rows of the first pair).
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
    for m in names:
        e = np.asarray(embeddings[m])[np.asarray(present[m], bool)]
        dup = same_rows(e).sum(1) > 1 if len(e) else np.zeros(0, bool)
        out[f"{m}/duplicate_share"] = float(dup.mean()) if len(e) else np.nan
    out["n"] = float(n)
    return out
