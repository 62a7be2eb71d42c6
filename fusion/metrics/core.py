"""Shared pieces of the metrics: input checks and the batched (bootstrap-weight) primitives.

Every primitive takes weights W (B, n): W[b, i] = how often sample i is in resample b (all
ones = the data as given) and returns one value per resample, NaN where undefined.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

ECE_BINS = 10
MIN_SUBGROUP_SIZE = 10
# Metric names MLflow accepts (it rejects '=', '+', ',' ...): subgroup keys are built to match.
MLFLOW_KEY = re.compile(r"^[/\w.\- ]*$")
# Keys that describe the sample rather than the model: reported, never bootstrapped.
_DESCRIPTIVE = frozenset({"n", "prevalence", "threshold"})
# Bootstrap weights are processed in chunks of about this many cells to bound memory.
_CHUNK_CELLS = 2_000_000

MetricDict = dict[str, float]
MetricFn = Callable[[np.ndarray, np.ndarray], Mapping[str, float]]


# --------------------------------------------------------------------------- input checks


def _binary_inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (y int 0/1, prob float) as flat arrays, checking shapes and ranges."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(prob, dtype=float).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("binary y_true must hold only 0 and 1")
    _check_prob(p)
    return y.astype(int), p


def _check_prob(p: np.ndarray) -> None:
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ValueError("prob must hold finite probabilities in [0, 1] (apply sigmoid/softmax)")


def _multiclass_inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1).astype(int)
    p = np.asarray(prob, dtype=float)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"multiclass prob must be (N, K) with N={y.size}; got {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"multiclass y_true must hold class indices 0..{p.shape[1] - 1}")
    _check_prob(p)
    return y, p


def _multilabel_inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=float)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"multilabel y_true and prob must be (N, L); got {y.shape}, {p.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("multilabel y_true must hold only 0 and 1")
    _check_prob(p)
    return y.astype(int), p


def _label_thresholds(thresholds: float | Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """One threshold per label (a scalar applies to all)."""
    return np.broadcast_to(np.asarray(thresholds, dtype=float), (n,)).copy()


def _label_names(names: Sequence[str] | None, n_labels: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(n_labels)]
    if len(names) != n_labels:
        raise ValueError(f"{len(names)} label names given for {n_labels} labels")
    return [str(n) for n in names]


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (the 'zero_division=nan' convention)."""
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _grouped_class_weights(
    y: np.ndarray, score: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted positive/negative mass per distinct score, scores ascending: two (B, U)."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ws = w[:, order]
    pos = np.add.reduceat(ws * y[order], starts, axis=1)
    neg = np.add.reduceat(ws * (1 - y[order]), starts, axis=1)
    return pos, neg


def _weighted_auc_ap(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Weighted AUROC (Mann-Whitney, ties count 1/2) and average precision, each (B,).

    AP is scikit-learn's step-wise definition: sum over distinct thresholds (descending) of
    (recall gain) x precision, with no interpolation.
    """
    if y.size == 0:
        nan = np.full(w.shape[0], np.nan)
        return nan, nan.copy()
    pos, neg = _grouped_class_weights(y, score, w)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    neg_below = np.cumsum(neg, axis=1) - neg
    auc = _div((pos * (neg_below + 0.5 * neg)).sum(1), n_pos * n_neg)
    tp = np.cumsum(pos[:, ::-1], axis=1)
    fp = np.cumsum(neg[:, ::-1], axis=1)
    precision = np.nan_to_num(_div(tp, tp + fp))  # 0/0 only where no positive gained: term is 0
    ap = _div((pos[:, ::-1] * precision).sum(1), n_pos)
    ap[n_neg == 0] = np.nan  # one class only: undefined by our convention
    return auc, ap


def _weighted_ece(correct: np.ndarray, conf: np.ndarray, w: np.ndarray, bins: int) -> np.ndarray:
    """ECE = sum_b |sum(correct) - sum(conf)| / N over equal-width confidence bins, (B,)."""
    idx = _bin_index(conf, bins)
    onehot = np.zeros((conf.size, bins))
    onehot[np.arange(conf.size), idx] = 1.0
    gap = w @ (onehot * (correct[:, None] - conf[:, None]))
    return _div(np.abs(gap).sum(1), w.sum(1))


def _bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins [0, 1/b), ..., [(b-1)/b, 1]: probability 1.0 falls in the last bin."""
    return np.minimum((conf * bins).astype(int), bins - 1)


def _scalars(batched: Mapping[str, np.ndarray]) -> MetricDict:
    return {k: float(v[0]) for k, v in batched.items()}
