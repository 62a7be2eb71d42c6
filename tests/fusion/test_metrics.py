"""Metrics against scikit-learn, known cases, bootstrap CIs, thresholds and subgroup keys."""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pytest
from sklearn import metrics as skm

from fusion.metrics import (
    MLFLOW_KEY,
    binary_metrics,
    bootstrap_ci,
    calibration_table,
    choose_threshold,
    multiclass_metrics,
    multilabel_metrics,
    presence_pattern,
    subgroup_key,
)
from fusion.tasks import evaluate
from modalities.errors import ConfigError, UnknownNameError


def _binary_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    # rounded scores give ties, which the batched AUROC/AP must handle like sklearn
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)
    return y, p


def _weights_one(metric_fn, y, p):
    """The vectorised (bootstrap) form evaluated with every sample drawn exactly once."""
    batched = metric_fn.func.batched if isinstance(metric_fn, partial) else metric_fn.batched
    kwargs = metric_fn.keywords if isinstance(metric_fn, partial) else {}
    return {
        k: float(v[0]) for k, v in batched(y, p, weights=np.ones((1, len(y))), **kwargs).items()
    }


def test_binary_matches_sklearn() -> None:
    y, p = _binary_data()
    m = binary_metrics(y, p, threshold=0.5)
    pred = (p >= 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert m["n"] == len(y) and m["prevalence"] == pytest.approx(y.mean())


@pytest.mark.parametrize(
    "metric_fn, make",
    [
        (partial(binary_metrics, threshold=0.4), "binary"),
        (multiclass_metrics, "multiclass"),
        (partial(multilabel_metrics, thresholds=[0.3, 0.5, 0.7]), "multilabel"),
    ],
)
def test_batched_forms_equal_point_estimates(metric_fn, make: str) -> None:
    rng = np.random.default_rng(1)
    if make == "binary":
        y, p = _binary_data(300, seed=2)
    elif make == "multiclass":
        y, p = rng.integers(0, 4, 300), rng.dirichlet(np.ones(4), 300)
    else:
        y, p = rng.integers(0, 2, (300, 3)), np.round(rng.random((300, 3)), 2)
    point = metric_fn(y, p)
    batched = _weights_one(metric_fn, y, p)
    for key, value in batched.items():
        assert value == pytest.approx(point[key], rel=1e-9, abs=1e-12, nan_ok=True), key


def test_multiclass_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 3, 200), rng.dirichlet(np.ones(3), 200)
    m = multiclass_metrics(y, p)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["auroc_macro"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert 0 <= m["ece"] <= 1


def test_multilabel_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    y, p = rng.integers(0, 2, (150, 3)), rng.random((150, 3))
    m = multilabel_metrics(y, p, 0.5, label_names=["flu", "covid", "rsv"])
    pred = (p >= 0.5).astype(int)
    assert m["auroc.covid"] == pytest.approx(skm.roc_auc_score(y[:, 1], p[:, 1]))
    assert m["auroc_macro"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"))
    assert m["auroc_micro"] == pytest.approx(skm.roc_auc_score(y, p, average="micro"))
    assert m["auprc_micro"] == pytest.approx(skm.average_precision_score(y, p, average="micro"))
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))


def test_perfect_and_constant_predictors() -> None:
    y = np.array([0, 1] * 50)
    perfect = binary_metrics(y, y.astype(float), 0.5)
    assert perfect["auroc"] == 1.0 and perfect["auprc"] == 1.0
    assert perfect["ece"] == pytest.approx(0.0) and perfect["brier"] == pytest.approx(0.0)
    assert perfect["sensitivity"] == perfect["specificity"] == 1.0
    constant = binary_metrics(y, np.full(100, 0.3), 0.5)
    assert constant["auroc"] == pytest.approx(0.5)
    assert constant["sensitivity"] == 0.0 and constant["specificity"] == 1.0
    assert np.isnan(constant["ppv"])  # nothing predicted positive: undefined, not an error


def test_ece_of_known_miscalibration() -> None:
    # everybody gets 0.8 but only half are positive: one bin, |0.5 - 0.8| = 0.3
    y = np.array([0, 1] * 50)
    assert binary_metrics(y, np.full(100, 0.8))["ece"] == pytest.approx(0.3)
    # two bins: 0.1 with 50% positives (gap 0.4), 0.9 with 100% positives (gap 0.1), equal weight
    p = np.r_[np.full(50, 0.1), np.full(50, 0.9)]
    y2 = np.r_[np.array([0, 1] * 25), np.ones(50, int)]
    assert binary_metrics(y2, p)["ece"] == pytest.approx(0.25)


def test_single_class_gives_nan_not_exception() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning leaks either
        m = binary_metrics(np.ones(20, int), np.linspace(0, 1, 20), 0.5)
    assert np.isnan(m["auroc"]) and np.isnan(m["auprc"]) and np.isnan(m["balanced_accuracy"])
    assert np.isnan(m["specificity"]) and m["prevalence"] == 1.0
    assert m["accuracy"] == pytest.approx(10 / 20)
    empty = binary_metrics([], [])
    assert empty["n"] == 0 and np.isnan(empty["auroc"]) and np.isnan(empty["brier"])
    mc = multiclass_metrics(np.zeros(5, int), np.full((5, 3), 1 / 3))
    assert np.isnan(mc["auroc_macro"]) and mc["accuracy"] == 1.0


def test_calibration_table_agrees_with_ece() -> None:
    y, p = _binary_data(500, seed=5)
    table = calibration_table(y, p, bins=10)
    assert len(table) == 10 and table["count"].sum() == 500
    filled = table[table["count"] > 0]
    ece = (filled["count"] * filled["gap"].abs()).sum() / 500
    assert ece == pytest.approx(binary_metrics(y, p)["ece"])
    assert table.loc[9, "bin_high"] == 1.0


def test_bootstrap_ci_contains_estimate_and_narrows() -> None:
    widths = []
    for n in (100, 1000):
        y, p = _binary_data(n, seed=6)
        fn = partial(binary_metrics, threshold=0.5)
        ci = bootstrap_ci(fn, y, p, n_boot=400, seed=0)
        point = fn(y, p)
        for key in ("auroc", "auprc", "accuracy", "f1", "brier", "ece"):
            low, high = ci[key]
            assert low <= point[key] <= high, key
        assert "n" not in ci and "prevalence" not in ci
        widths.append(ci["auroc"][1] - ci["auroc"][0])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 10x the patients, ~3x narrower


def test_bootstrap_is_seeded_and_generic_callables_agree() -> None:
    y, p = _binary_data(120, seed=7)
    fast = bootstrap_ci(partial(binary_metrics, threshold=0.5), y, p, n_boot=200, seed=3)
    again = bootstrap_ci(partial(binary_metrics, threshold=0.5), y, p, n_boot=200, seed=3)
    assert fast == again
    # a plain callable takes the per-resample path over the same resamples
    slow = bootstrap_ci(lambda a, b: binary_metrics(a, b, 0.5), y, p, n_boot=200, seed=3)
    for key in ("auroc", "f1", "ece"):
        assert slow[key] == pytest.approx(fast[key]), key


def test_bootstrap_skips_undefined_resamples() -> None:
    # 1 positive in 40: unstratified resamples often lose it, AUROC is NaN there and skipped
    y = np.r_[np.ones(1, int), np.zeros(39, int)]
    p = np.linspace(0, 1, 40)[::-1]
    ci = bootstrap_ci(partial(binary_metrics, threshold=0.5), y, p, n_boot=300, stratified=False)
    low, high = ci["auroc"]
    assert 0 <= low <= high <= 1


def test_threshold_rules_on_constructed_case() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.65, 0.5, 0.7, 0.8, 0.9, 0.95])
    # youden: at 0.7 sens 0.8, spec 1 (J 0.8); at 0.5 sens 1, spec 0.75 (J 0.75)
    assert choose_threshold(y, p, "youden") == pytest.approx(0.7)
    # f1: at 0.5 F1 = 10/11 beats 8/9 at 0.7
    assert choose_threshold(y, p, "f1") == pytest.approx(0.5)
    assert choose_threshold(y, p, "sensitivity@0.9") == pytest.approx(0.5)
    assert choose_threshold(y, p, "specificity@1.0") == pytest.approx(0.7)
    with pytest.raises(UnknownNameError, match="youden"):
        choose_threshold(y, p, "magic")
    with pytest.raises(ConfigError, match="target"):
        choose_threshold(y, p, "sensitivity@high")
    with pytest.warns(RuntimeWarning, match="one class"):
        assert choose_threshold(np.zeros(5, int), np.linspace(0, 1, 5)) == 0.5


def test_evaluate_flat_keys_and_subgroups() -> None:
    y, p = _binary_data(200, seed=8)
    present = {"ct": np.ones(200, bool), "note": np.arange(200) % 4 != 0}
    present["ct"][:5] = False  # a 5-patient pattern: too small to score
    groups = {"present": presence_pattern(present)}
    out = evaluate("binary", y, p, threshold=0.4, groups=groups, n_boot=100)
    assert out["threshold"] == 0.4
    assert out["auroc_ci_low"] <= out["auroc"] <= out["auroc_ci_high"]
    assert "n_ci_low" not in out
    assert subgroup_key("present", "ct+note", "auroc") == "present.ct-note/auroc"
    assert "present.ct-note/auroc" in out and "present.ct/auroc" in out
    assert not any(k.startswith("present.note/") for k in out)  # 5 rows < 10
    assert out["present.ct-note/n"] + out["present.ct/n"] == 195
    assert all(MLFLOW_KEY.match(k) for k in out)
    with pytest.raises(UnknownNameError):
        evaluate("regression", y, p)


def test_evaluate_skips_single_class_subgroups_and_other_tasks() -> None:
    rng = np.random.default_rng(9)
    y = np.r_[np.zeros(30, int), rng.integers(0, 2, 30)]
    p = rng.random(60)
    group = np.r_[np.full(30, "a"), np.full(30, "b")]
    out = evaluate("binary", y, p, groups={"site": group}, n_boot=0)
    assert "site.b/auroc" in out and not any(k.startswith("site.a/") for k in out)
    assert "auroc_ci_low" not in out
    yc, pc = rng.integers(0, 3, 60), rng.dirichlet(np.ones(3), 60)
    mc = evaluate("multiclass", yc, pc, n_boot=50)
    assert mc["auroc_macro_ci_low"] <= mc["auroc_macro"] <= mc["auroc_macro_ci_high"]
    yl, pl = rng.integers(0, 2, (60, 2)), rng.random((60, 2))
    ml = evaluate("multilabel", yl, pl, n_boot=50, label_names=["a", "b"])
    assert "auroc.a_ci_low" in ml and "hamming_loss_ci_high" in ml
