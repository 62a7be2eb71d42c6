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

Confidence intervals (``<key>_ci_low`` / ``<key>_ci_high``, with ``n_boot > 0``): percentile
bootstrap over queries. Ranks are computed once against the full gallery; each resample
redraws the scored rows (patients) with replacement, the same draw for every direction and
pair, so the CI covers the sampling of queries for *this* gallery. It does not cover the
gallery: a larger gallery is a harder task (chance is K / N), not a noisier estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from fusion.metrics.bootstrap import percentile_ci, resample_weights
from fusion.metrics.core import _CHUNK_CELLS

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
    if len(q) == 0:  # a pair with no rows in common: no queries, no ranks
        return np.zeros(0, dtype=int)
    sim = q @ g.T
    equivalent = same_rows(g) | same_rows(q) | np.eye(len(q), dtype=bool)
    true = np.where(equivalent, sim, -np.inf).max(1, keepdims=True)
    return 1 + ((sim >= true) & ~equivalent).sum(1)


def _direction(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    n = ranks.size
    out = {f"recall@{k}": float((ranks <= k).mean()) if n else np.nan for k in ks}
    out["median_rank"] = float(np.median(ranks)) if n else np.nan
    return out


def _resampled(ranks: np.ndarray, w: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Recall@K and median rank of each resample (B,); ``w`` (B, n): draw counts per query."""
    total = w.sum(1)
    if ranks.size == 0:
        return {m: np.full(len(w), np.nan) for m in [*(f"recall@{k}" for k in ks), "median_rank"]}
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {f"recall@{k}": w @ (ranks <= k) / total for k in ks}
    order = np.argsort(ranks, kind="stable")
    cum = np.cumsum(w[:, order], axis=1)  # a resample's sorted ranks, as cumulative counts

    def at(pos: np.ndarray) -> np.ndarray:  # value at 0-based position pos of each resample
        return ranks[order][(cum > pos[:, None]).argmax(1)].astype(float)

    mid = (total - 1) / 2
    out["median_rank"] = np.where(total > 0, (at(np.floor(mid)) + at(np.ceil(mid))) / 2, np.nan)
    return out


def _nanmean(values: Sequence[Any]) -> Any:
    """Mean over directions (axis 0), NaN where every direction is NaN (no warning)."""
    v = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(v, 0) / (~np.isnan(v)).sum(0)


def retrieval_metrics(
    embeddings: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    ks: Sequence[int] = RECALL_AT,
    n_boot: int = 0,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Recall@K and median rank for every ordered modality pair, plus their means.

    ``embeddings[m]``: (N, D) normalised; ``present[m]``: (N,) bool. A pair is scored on the
    rows where both modalities are present. Keys: ``<a>_to_<b>/recall@K``,
    ``<a>_to_<b>/median_rank``, ``recall@K`` / ``median_rank`` (mean over directions),
    ``<m>/duplicate_share`` per tower (rows present) and ``n`` (rows of the first pair).
    With ``n_boot > 0`` every Recall@K and median rank also gets ``_ci_low`` / ``_ci_high``
    (``1 - alpha`` percentile bootstrap over queries, seeded; module docstring).
    """
    names = sorted(embeddings)
    out: dict[str, float] = {}
    per: dict[str, list[float]] = {}
    ranks: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # direction -> (rows, ranks)
    n = 0
    for a, b in combinations(names, 2):
        both = np.asarray(present[a], bool) & np.asarray(present[b], bool)
        n = n or int(both.sum())
        ea, eb = np.asarray(embeddings[a])[both], np.asarray(embeddings[b])[both]
        for q, g, key in ((ea, eb, f"{a}_to_{b}"), (eb, ea, f"{b}_to_{a}")):
            ranks[key] = (both, retrieval_ranks(q, g))
            for metric, v in _direction(ranks[key][1], ks).items():
                out[f"{key}/{metric}"] = v
                per.setdefault(metric, []).append(v)
    for metric, values in per.items():
        out[metric] = float(_nanmean(values))
    if n_boot > 0 and ranks:
        out |= _retrieval_ci(ranks, ks, n_boot, alpha, seed)
    for m in names:
        e = np.asarray(embeddings[m])[np.asarray(present[m], bool)]
        dup = same_rows(e).sum(1) > 1 if len(e) else np.zeros(0, bool)
        out[f"{m}/duplicate_share"] = float(dup.mean()) if len(e) else np.nan
    out["n"] = float(n)
    return out


def _retrieval_ci(
    ranks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    ks: Sequence[int],
    n_boot: int,
    alpha: float,
    seed: int,
) -> dict[str, float]:
    """``_ci_low`` / ``_ci_high`` of every direction's and every mean Recall@K / median rank.

    One draw over the rows scored by any pair, subset per pair, so a patient drawn twice
    counts twice in every direction it takes part in (directions are not independent).
    """
    scored = np.logical_or.reduce([rows for rows, _ in ranks.values()])
    n_rows = int(scored.sum())
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n_rows, 1))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        w = (resample_weights([np.arange(n_rows)], n_rows, b, rng) if n_rows
             else np.zeros((b, 0)))
        for key, (rows, r) in ranks.items():
            for metric, v in _resampled(r, w[:, rows[scored]], ks).items():
                parts.setdefault(f"{key}/{metric}", []).append(v)
    values = {k: np.concatenate(v) for k, v in parts.items()}
    for metric in [*(f"recall@{k}" for k in ks), "median_rank"]:
        values[metric] = _nanmean([values[f"{key}/{metric}"] for key in ranks])
    out: dict[str, float] = {}
    for key, v in values.items():
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = percentile_ci(v, n_boot, alpha)
    return out
