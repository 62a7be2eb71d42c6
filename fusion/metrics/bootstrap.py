"""Percentile bootstrap confidence intervals, vectorised over resamples where possible."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np

from fusion.metrics.core import _CHUNK_CELLS, _DESCRIPTIVE, MetricFn


def _batched_form(metric_fn: MetricFn) -> Callable[..., dict] | None:
    """The vectorised form of ``metric_fn`` (a metric function or a partial of one), if any."""
    if isinstance(metric_fn, partial):
        inner = getattr(metric_fn.func, "batched", None)
        return partial(inner, *metric_fn.args, **metric_fn.keywords) if inner else None
    return getattr(metric_fn, "batched", None)


def _strata(y: np.ndarray, stratified: bool) -> list[np.ndarray]:
    """Index groups resampled separately: one per class (binary/multiclass), else everything."""
    if not stratified or y.ndim != 1:
        return [np.arange(y.shape[0])]
    return [np.flatnonzero(y == c) for c in np.unique(y)]


def resample_weights(
    strata: list[np.ndarray], n: int, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n) draw counts: each stratum resampled with replacement to its own size."""
    flat = [s[rng.integers(0, s.size, size=(n_boot, s.size))] for s in strata if s.size]
    draws = np.concatenate(flat, axis=1) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def bootstrap_ci(
    metric_fn: MetricFn,
    y_true: Any,
    prob: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of every metric ``metric_fn(y_true, prob)`` returns.

    Rows (patients) are resampled with replacement, within each class when ``stratified``
    (binary/multiclass y), so every resample keeps the class balance. Resamples where a
    metric is undefined (NaN) are skipped for that metric; a metric defined in fewer than
    half of them gets (NaN, NaN). Metric functions from this module (or ``functools.partial``
    of them) run vectorised over all resamples; any other callable is called per resample.
    """
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=float)
    n = y.shape[0]
    if n == 0 or n_boot <= 0:
        return {k: (np.nan, np.nan) for k in metric_fn(y, p) if k not in _DESCRIPTIVE}
    rng = np.random.default_rng(seed)
    strata = _strata(y, stratified)
    batched = _batched_form(metric_fn)
    chunk = max(1, _CHUNK_CELLS // max(n * (y.shape[1] if y.ndim == 2 else 1), 1))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_boot, chunk):
        w = resample_weights(strata, n, min(chunk, n_boot - start), rng)
        if batched is not None:
            parts.append(batched(y, p, weights=w))
        else:
            parts.append(_loop(metric_fn, y, p, w))
    values = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    return {k: percentile_ci(v, n_boot, alpha) for k, v in values.items() if k not in _DESCRIPTIVE}


def percentile_ci(values: np.ndarray, n_boot: int, alpha: float) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentiles of one metric over its resamples; NaN values
    (metric undefined in that resample) are skipped, and fewer than half defined gives NaN."""
    v = values[~np.isnan(values)]
    if v.size < max(1, n_boot // 2):
        return (np.nan, np.nan)
    low, high = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(low), float(high))


def _loop(metric_fn: MetricFn, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict:
    """Fallback for arbitrary metric callables: expand the weights back into row indices."""
    rows: list[Mapping[str, float]] = []
    for counts in w.astype(int):
        idx = np.repeat(np.arange(y.shape[0]), counts)
        rows.append(metric_fn(y[idx], p[idx]))
    return {k: np.array([r.get(k, np.nan) for r in rows], float) for k in rows[0]}
