"""Subgroup (per presence pattern, site, ...) metrics and the flat, MLflow-ready key layout.

``evaluate_with`` is the task-independent evaluation: a task supplies its metric function
(``fusion.tasks``), this adds bootstrap CIs and subgroup point estimates under flat keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fusion.metrics.bootstrap import bootstrap_ci
from fusion.metrics.core import MIN_SUBGROUP_SIZE, MetricFn


def _enough(y: np.ndarray) -> bool:
    """A subgroup is scored when it has >= MIN_SUBGROUP_SIZE rows and more than one class."""
    if y.shape[0] < MIN_SUBGROUP_SIZE:
        return False
    if y.ndim == 1:
        return np.unique(y).size >= 2
    return bool(((y.min(0) == 0) & (y.max(0) == 1)).any())  # some label has both classes


def _safe_key_part(text: str) -> str:
    """Make a group name/value MLflow-safe: '+' becomes '-', other bad characters '_'."""
    return re.sub(r"[^\w.\- ]", "_", str(text).replace("+", "-")).strip() or "_"


def subgroup_key(group: str, value: Any, metric: str) -> str:
    """Flat key of a subgroup metric: ``"<group>.<value>/<metric>"``.

    MLflow rejects '=' and '+' in metric names, so ``present=ct+note`` is logged as
    ``present.ct-note/auroc``.
    """
    return f"{_safe_key_part(group)}.{_safe_key_part(value)}/{metric}"


def presence_pattern(present: Mapping[str, Any]) -> np.ndarray:
    """Per-row missing-modality pattern from ``present[name]`` bool arrays, e.g. ``"ct+note"``.

    Names are joined in sorted order; a row with nothing present is ``"none"``. Use it as a
    group for ``evaluate(groups={"present": presence_pattern(present)})``.
    """
    names = sorted(present)
    if not names:
        return np.array([], dtype=object)
    mask = np.stack([np.asarray(present[m], bool).reshape(-1) for m in names], axis=1)
    return np.array(
        ["+".join(m for m, on in zip(names, row, strict=True) if on) or "none" for row in mask],
        dtype=object,
    )


def evaluate_with(
    fn: MetricFn,
    y: np.ndarray,
    p: np.ndarray,
    groups: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    extra: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """``fn(y, p)`` plus ``extra`` (e.g. the threshold), ``<metric>_ci_low/_ci_high`` with
    ``n_boot > 0``, and ``<group>.<value>/<metric>`` for every group value with >= 10 rows
    and more than one class (see ``subgroup_key``)."""
    out = dict(fn(y, p)) | dict(extra or {})
    if n_boot > 0:
        for key, (low, high) in bootstrap_ci(fn, y, p, n_boot, alpha, seed).items():
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
    for group, values in (groups or {}).items():
        values = np.asarray(values, dtype=object).reshape(-1)
        if values.size != y.shape[0]:
            raise ValueError(f"group {group!r} has {values.size} values for {y.shape[0]} rows")
        for value in sorted({str(v) for v in values}):
            rows = np.array([str(v) == value for v in values])
            if not _enough(y[rows]):
                continue
            for key, v in fn(y[rows], p[rows]).items():
                out[subgroup_key(group, value, key)] = v
    return out
