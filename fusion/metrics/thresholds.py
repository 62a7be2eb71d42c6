"""Decision-threshold rules for binary scores, chosen on validation data."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from fusion.metrics.core import _binary_inputs, _div
from modalities.errors import ConfigError, UnknownNameError


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    return float(thr[int(np.argmax(tpr - fpr))])  # first max = highest threshold among ties


def _best_f1(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thr = precision_recall_curve(y, p, drop_intermediate=False)
    f1 = np.nan_to_num(_div(2 * precision[:-1] * recall[:-1], precision[:-1] + recall[:-1]))
    # thresholds ascend: take the last max, i.e. the highest threshold among ties
    return float(thr[len(f1) - 1 - int(np.argmax(f1[::-1]))])


def _at_sensitivity(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity reaches ``target`` (the best specificity there)."""
    from sklearn.metrics import roc_curve

    _, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    return float(thr[int(np.argmax(tpr >= target - 1e-12))])


def _at_specificity(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """Lowest threshold whose specificity stays >= ``target`` (the best sensitivity there)."""
    from sklearn.metrics import roc_curve

    fpr, _, thr = roc_curve(y, p, drop_intermediate=False)
    ok = np.flatnonzero(1 - fpr >= target - 1e-12)
    return float(thr[ok[-1]])


THRESHOLD_RULES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "youden": _youden,
    "f1": _best_f1,
}
# Rules written "<name>@<target>", e.g. "sensitivity@0.9".
TARGET_RULES: dict[str, Callable[[np.ndarray, np.ndarray, float], float]] = {
    "sensitivity": _at_sensitivity,
    "specificity": _at_specificity,
}


def _resolve_rule(rule: str) -> Callable[[np.ndarray, np.ndarray], float]:
    name, sep, target = rule.partition("@")
    if not sep:
        if rule not in THRESHOLD_RULES:
            valid = [*THRESHOLD_RULES, *(f"{t}@<0..1>" for t in TARGET_RULES)]
            raise UnknownNameError("threshold rule", rule, valid)
        return THRESHOLD_RULES[rule]
    if name not in TARGET_RULES:
        raise UnknownNameError("threshold rule", name, [f"{t}@<0..1>" for t in TARGET_RULES])
    try:
        value = float(target)
    except ValueError:
        value = np.nan
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"threshold rule {rule!r}: the target after '@' must be in (0, 1]")
    return partial(TARGET_RULES[name], target=value)


def choose_threshold(y_true: Any, prob: Any, rule: str = "youden") -> float:
    """Pick the decision threshold on validation data (predict positive when prob >= it).

    ``youden`` maximises sensitivity + specificity - 1; ``f1`` maximises F1;
    ``sensitivity@X`` is the highest threshold with sensitivity >= X (best specificity
    there); ``specificity@X`` the lowest with specificity >= X. Ties go to the higher
    threshold. With one class only no rule is defined: returns 0.5 and warns.
    """
    fn = _resolve_rule(rule)
    y, p = _binary_inputs(y_true, prob)
    if not 0 < y.sum() < y.size:
        warnings.warn(
            "choose_threshold: validation data hold one class only; using threshold 0.5",
            RuntimeWarning,
            stacklevel=2,
        )
        return 0.5
    # roc_curve's first threshold is +inf ("predict nothing"): report a finite equivalent
    return float(min(fn(y, p), np.nextafter(p.max(), np.inf)))
