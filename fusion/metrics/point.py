"""Point metrics per task (binary, multiclass, multilabel) and the calibration table.

Point estimates come from scikit-learn (the reference everybody trusts); only the expected
calibration error (ECE), which scikit-learn lacks, is computed here. Each metric function
also has a *batched* form (``fn.batched(y, p, ..., weights=W)``) that computes all bootstrap
resamples at once with numpy; the tests check that it equals scikit-learn when every weight
is 1. Undefined metrics (one class only, empty input) are NaN, never an exception.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fusion.metrics.core import (
    ECE_BINS,
    MetricDict,
    _bin_index,
    _binary_inputs,
    _div,
    _label_names,
    _label_thresholds,
    _multiclass_inputs,
    _multilabel_inputs,
    _weighted_auc_ap,
    _weighted_ece,
)


def _binary_batched(y: np.ndarray, p: np.ndarray, threshold: float, w: np.ndarray) -> dict:
    pred = (p >= threshold).astype(float)
    yf = y.astype(float)
    tp, fp = w @ (yf * pred), w @ ((1 - yf) * pred)
    fn, tn = w @ (yf * (1 - pred)), w @ ((1 - yf) * (1 - pred))
    n = w.sum(1)
    one_class = ((tp + fn) == 0) | ((tn + fp) == 0)
    auc, ap = _weighted_auc_ap(y, p, w)
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    balanced = (sens + spec) / 2
    balanced[one_class] = np.nan
    return {
        "auroc": auc,
        "auprc": ap,
        "accuracy": _div(tp + tn, n),
        "balanced_accuracy": balanced,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "brier": _div(w @ (p - yf) ** 2, n),
        "ece": _weighted_ece(yf, p, w, ECE_BINS),
    }


def _multiclass_batched(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict:
    k = p.shape[1]
    pred = p.argmax(1) if y.size else np.zeros(0, int)
    pair = np.zeros((y.size, k * k))
    pair[np.arange(y.size), y * k + pred] = 1.0
    conf = (w @ pair).reshape(-1, k, k)  # conf[b, true, predicted]
    tp = np.diagonal(conf, axis1=1, axis2=2)
    support, predicted = conf.sum(2), conf.sum(1)
    n = w.sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN is intended
        balanced = np.nanmean(_div(tp, support), axis=1)
        f1 = _div(2 * tp, support + predicted)
        macro_f1 = np.nanmean(f1, axis=1)
        aucs = np.stack(
            [_weighted_auc_ap((y == c).astype(int), p[:, c], w)[0] for c in range(k)], axis=1
        )
        macro_auc = np.nanmean(aucs, axis=1)
    balanced[(support > 0).sum(1) < 2] = np.nan
    onehot = np.eye(k)[y] if y.size else np.zeros((0, k))
    p_true = np.clip(p[np.arange(y.size), y], np.finfo(float).eps, 1 - np.finfo(float).eps)
    return {
        "accuracy": _div(tp.sum(1), n),
        "balanced_accuracy": balanced,
        "f1_macro": macro_f1,
        "f1_weighted": _div(np.nansum(f1 * support, axis=1), n),
        "auroc_macro": macro_auc,
        "log_loss": _div(w @ -np.log(p_true), n),
        "brier": _div(w @ ((p - onehot) ** 2).sum(1), n),
        "ece": _weighted_ece(
            (pred == y).astype(float), p.max(1) if y.size else p[:, 0], w, ECE_BINS
        ),
    }


def _multilabel_batched(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: float | Sequence[float] | np.ndarray,
    w: np.ndarray,
    label_names: Sequence[str] | None = None,
) -> dict:
    n_labels = y.shape[1]
    names = _label_names(label_names, n_labels)
    pred = (p >= _label_thresholds(thresholds, n_labels)).astype(float)
    yf = y.astype(float)
    tp, fp, fn = w @ (yf * pred), w @ ((1 - yf) * pred), w @ (yf * (1 - pred))  # (B, L)
    out: dict[str, np.ndarray] = {}
    per = {"auroc": [], "auprc": [], "f1": _div(2 * tp, 2 * tp + fp + fn)}
    for j in range(n_labels):
        auc, ap = _weighted_auc_ap(y[:, j], p[:, j], w)
        per["auroc"].append(auc)
        per["auprc"].append(ap)
    per["auroc"] = np.stack(per["auroc"], 1) if n_labels else np.zeros((w.shape[0], 0))
    per["auprc"] = np.stack(per["auprc"], 1) if n_labels else np.zeros((w.shape[0], 0))
    for metric, values in per.items():
        for j, name in enumerate(names):
            out[f"{metric}.{name}"] = values[:, j]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[f"{metric}_macro"] = np.nanmean(values, axis=1)
    w_flat = np.repeat(w, n_labels, axis=1)  # sample-major, matching y.ravel()
    out["auroc_micro"], out["auprc_micro"] = _weighted_auc_ap(y.ravel(), p.ravel(), w_flat)
    out["f1_micro"] = _div(2 * tp.sum(1), (2 * tp + fp + fn).sum(1))
    n = w.sum(1)
    out["hamming_loss"] = _div((fp + fn).sum(1), n * n_labels)
    out["subset_accuracy"] = _div(w @ (pred == yf).all(1).astype(float), n)
    return out


def binary_metrics(y_true: Any, prob: Any, threshold: float = 0.5) -> MetricDict:
    """Binary metrics at ``threshold`` (predict positive when prob >= threshold).

    auroc, auprc (average precision), accuracy, balanced_accuracy, f1, sensitivity,
    specificity, ppv, npv, brier, ece (10 equal-width bins), n, prevalence. Metrics that need
    both classes (or a non-empty denominator) are NaN when it is missing.
    """
    from sklearn import metrics as skm

    y, p = _binary_inputs(y_true, prob)
    n = y.size
    out: MetricDict = {"n": float(n), "prevalence": float(y.mean()) if n else np.nan}
    if n == 0:
        return out | dict.fromkeys(_binary_batched(y, p, threshold, np.ones((1, 0))), np.nan)
    both = 0 < y.sum() < n
    pred = (p >= threshold).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning: we return NaN by design
        out |= {
            "auroc": skm.roc_auc_score(y, p) if both else np.nan,
            "auprc": skm.average_precision_score(y, p) if both else np.nan,
            "accuracy": skm.accuracy_score(y, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred) if both else np.nan,
            "f1": skm.f1_score(y, pred, zero_division=np.nan),
            "sensitivity": skm.recall_score(y, pred, zero_division=np.nan),
            "specificity": skm.recall_score(y, pred, pos_label=0, zero_division=np.nan),
            "ppv": skm.precision_score(y, pred, zero_division=np.nan),
            "npv": skm.precision_score(y, pred, pos_label=0, zero_division=np.nan),
            "brier": skm.brier_score_loss(y, p, pos_label=1),
            "ece": float(_weighted_ece(y.astype(float), p, np.ones((1, n)), ECE_BINS)[0]),
        }
    return {k: float(v) for k, v in out.items()}


binary_metrics.batched = lambda y, p, threshold=0.5, *, weights: _binary_batched(  # type: ignore[attr-defined]
    *_binary_inputs(y, p), threshold, weights
)


def multiclass_metrics(y_true: Any, prob: Any) -> MetricDict:
    """Multiclass metrics from class indices (N,) and probabilities (N, K).

    accuracy, balanced_accuracy, f1_macro, f1_weighted, auroc_macro (one-vs-rest, mean over
    classes whose AUROC is defined), log_loss, brier (sum over classes, range [0, 2]), ece
    (top-label: confidence = max probability, correct = argmax is the true class), n.
    """
    from sklearn import metrics as skm

    y, p = _multiclass_inputs(y_true, prob)
    k, n = p.shape[1], y.size
    if n == 0:
        return {"n": 0.0} | dict.fromkeys(_multiclass_batched(y, p, np.ones((1, 0))), np.nan)
    labels = list(range(k))
    pred = p.argmax(1)
    several = np.unique(y).size >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aucs = [
            skm.roc_auc_score(y == c, p[:, c]) if 0 < (y == c).sum() < n else np.nan for c in labels
        ]
        out = {
            "accuracy": skm.accuracy_score(y, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred) if several else np.nan,
            "f1_macro": skm.f1_score(y, pred, labels=labels, average="macro", zero_division=np.nan),
            "f1_weighted": skm.f1_score(
                y, pred, labels=labels, average="weighted", zero_division=np.nan
            ),
            "auroc_macro": np.nanmean(aucs) if several else np.nan,
            "log_loss": skm.log_loss(y, p, labels=labels),
            "brier": skm.brier_score_loss(y, p, labels=labels),
            "ece": float(
                _weighted_ece((pred == y).astype(float), p.max(1), np.ones((1, n)), ECE_BINS)[0]
            ),
            "n": n,
        }
    return {key: float(v) for key, v in out.items()}


multiclass_metrics.batched = lambda y, p, *, weights: _multiclass_batched(  # type: ignore[attr-defined]
    *_multiclass_inputs(y, p), weights
)


def multilabel_metrics(
    y_true: Any,
    prob: Any,
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
    label_names: Sequence[str] | None = None,
) -> MetricDict:
    """Multilabel metrics from 0/1 targets (N, L) and probabilities (N, L).

    Per label ``auroc.<name>``, ``auprc.<name>``, ``f1.<name>`` (names default to the label
    index); ``*_macro`` (mean over labels where defined) and ``*_micro`` (all cells pooled);
    ``hamming_loss`` (fraction of wrong cells) and ``subset_accuracy`` (rows entirely right).
    """
    from sklearn import metrics as skm

    y, p = _multilabel_inputs(y_true, prob)
    n, n_labels = y.shape
    names = _label_names(label_names, n_labels)
    if n == 0 or n_labels == 0:
        empty = _multilabel_batched(y, p, thresholds, np.ones((1, n)), names)
        return {"n": float(n)} | dict.fromkeys(empty, np.nan)
    pred = (p >= _label_thresholds(thresholds, n_labels)).astype(int)
    out: MetricDict = {"n": float(n)}
    per: dict[str, list[float]] = {"auroc": [], "auprc": [], "f1": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in range(n_labels):
            both = 0 < y[:, j].sum() < n
            per["auroc"].append(skm.roc_auc_score(y[:, j], p[:, j]) if both else np.nan)
            per["auprc"].append(skm.average_precision_score(y[:, j], p[:, j]) if both else np.nan)
            per["f1"].append(skm.f1_score(y[:, j], pred[:, j], zero_division=np.nan))
        for metric, values in per.items():
            out |= {f"{metric}.{name}": v for name, v in zip(names, values, strict=True)}
            out[f"{metric}_macro"] = np.nanmean(values) if not np.isnan(values).all() else np.nan
        flat_both = 0 < y.sum() < y.size
        out["auroc_micro"] = skm.roc_auc_score(y.ravel(), p.ravel()) if flat_both else np.nan
        out["auprc_micro"] = (
            skm.average_precision_score(y.ravel(), p.ravel()) if flat_both else np.nan
        )
        out["f1_micro"] = skm.f1_score(y, pred, average="micro", zero_division=np.nan)
        out["hamming_loss"] = skm.hamming_loss(y, pred)
        out["subset_accuracy"] = skm.accuracy_score(y, pred)
    return {k: float(v) for k, v in out.items()}


multilabel_metrics.batched = (  # type: ignore[attr-defined]
    lambda y, p, thresholds=0.5, label_names=None, *, weights: _multilabel_batched(
        *_multilabel_inputs(y, p), thresholds, weights, label_names
    )
)


def calibration_table(y_true: Any, prob: Any, bins: int = ECE_BINS) -> pd.DataFrame:
    """Reliability table over equal-width bins: one row per bin, empty bins included.

    Columns: bin_low, bin_high, count, mean_prob (mean predicted probability), frac_pos
    (observed frequency of the positive class), gap (frac_pos - mean_prob; NaN when empty).
    ECE = sum(count * |gap|) / sum(count) over non-empty bins. For multiclass, pass the top-label
    confidence and whether the argmax was right.
    """
    y, p = _binary_inputs(y_true, prob)
    idx = _bin_index(p, bins)
    count = np.bincount(idx, minlength=bins).astype(float)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y.astype(float), minlength=bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    mean_p, frac = _div(sum_p, count), _div(sum_y, count)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": count.astype(int),
            "mean_prob": mean_p,
            "frac_pos": frac,
            "gap": frac - mean_p,
        }
    )
