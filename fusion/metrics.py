"""Evaluation metrics: point estimates, bootstrap confidence intervals, subgroups, calibration.

Point estimates come from scikit-learn (the reference everybody trusts); only the expected
calibration error (ECE), which scikit-learn lacks, is computed here. Bootstrap resampling
needs the same metrics a thousand times, so each task also has a *batched* form that takes a
matrix of bootstrap weights (how often each patient was drawn in each resample) and computes
all resamples at once with numpy; the tests check that the batched forms equal scikit-learn
when every weight is 1. Undefined metrics (one class only, empty input) are NaN, never an
exception, so a small subgroup cannot crash an evaluation.

Definitions, the threshold rules and the bootstrap method are documented in docs/metrics.md.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from modalities.errors import ConfigError, UnknownNameError

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


# --------------------------------------------------------------------------- batched primitives
# Every primitive takes weights W (B, n): W[b, i] = how often sample i is in resample b
# (all ones = the data as given) and returns one value per resample, NaN where undefined.


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


def _scalars(batched: Mapping[str, np.ndarray]) -> MetricDict:
    return {k: float(v[0]) for k, v in batched.items()}


# --------------------------------------------------------------------------- point estimates


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


# --------------------------------------------------------------------------- thresholds


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


# --------------------------------------------------------------------------- bootstrap


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


def _weights(strata: list[np.ndarray], n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
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
        w = _weights(strata, n, min(chunk, n_boot - start), rng)
        if batched is not None:
            parts.append(batched(y, p, weights=w))
        else:
            parts.append(_loop(metric_fn, y, p, w))
    values = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    out: dict[str, tuple[float, float]] = {}
    for key, v in values.items():
        if key in _DESCRIPTIVE:
            continue
        v = v[~np.isnan(v)]
        if v.size < max(1, n_boot // 2):
            out[key] = (np.nan, np.nan)
        else:
            low, high = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            out[key] = (float(low), float(high))
    return out


def _loop(metric_fn: MetricFn, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict:
    """Fallback for arbitrary metric callables: expand the weights back into row indices."""
    rows: list[Mapping[str, float]] = []
    for counts in w.astype(int):
        idx = np.repeat(np.arange(y.shape[0]), counts)
        rows.append(metric_fn(y[idx], p[idx]))
    return {k: np.array([r.get(k, np.nan) for r in rows], float) for k in rows[0]}


# --------------------------------------------------------------------------- evaluate


def _binary_task(y: np.ndarray, p: np.ndarray, threshold: Any, **_: Any) -> MetricFn:
    return partial(binary_metrics, threshold=0.5 if threshold is None else float(threshold))


def _multiclass_task(y: np.ndarray, p: np.ndarray, threshold: Any, **_: Any) -> MetricFn:
    return multiclass_metrics


def _multilabel_task(
    y: np.ndarray, p: np.ndarray, threshold: Any, label_names: Sequence[str] | None = None
) -> MetricFn:
    t = 0.5 if threshold is None else threshold
    return partial(multilabel_metrics, thresholds=t, label_names=label_names)


def _enough(y: np.ndarray) -> bool:
    """A subgroup is scored when it has >= MIN_SUBGROUP_SIZE rows and more than one class."""
    if y.shape[0] < MIN_SUBGROUP_SIZE:
        return False
    if y.ndim == 1:
        return np.unique(y).size >= 2
    return bool(((y.min(0) == 0) & (y.max(0) == 1)).any())  # some label has both classes


TASKS: dict[str, Callable[..., MetricFn]] = {
    "binary": _binary_task,
    "multiclass": _multiclass_task,
    "multilabel": _multilabel_task,
}


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


def evaluate(
    task: str,
    y_true: Any,
    prob: Any,
    threshold: float | Sequence[float] | None = None,
    groups: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    label_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """All metrics of ``task`` as flat, MLflow-ready keys.

    ``<metric>`` and, with ``n_boot > 0``, ``<metric>_ci_low`` / ``<metric>_ci_high``; the
    threshold used (binary); and for each group column, e.g. ``groups={"present": patterns}``,
    ``<group>.<value>/<metric>`` point estimates for every value with >= 10 rows and more than
    one class (see ``subgroup_key``). ``threshold`` defaults to 0.5 and should be chosen on
    validation data with ``choose_threshold``.
    """
    if task not in TASKS:
        raise UnknownNameError("task", task, list(TASKS))
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=float)
    fn = TASKS[task](y, p, threshold, label_names=label_names)
    out = dict(fn(y, p))
    if task == "binary":
        out["threshold"] = 0.5 if threshold is None else float(threshold)  # type: ignore[arg-type]
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
