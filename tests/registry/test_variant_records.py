"""The train summary's per-variant rows: multiclass/multilabel AUROC (``auroc_macro``) is
reported under ``auroc`` rather than left empty, and accuracy comes with its CI."""

from __future__ import annotations

from registry.experiment import VariantRun, _variant_records


def _run(metrics: dict[str, float]) -> VariantRun:
    return VariantRun("concat", "r1", "concat", ["audio", "image"], metrics, 0.8, None, 1.0)


def test_multiclass_rows_report_macro_auroc_and_accuracy_ci() -> None:
    (row,) = _variant_records([_run({
        "n": 300.0, "accuracy": 0.8, "accuracy_ci_low": 0.75, "accuracy_ci_high": 0.85,
        "auroc_macro": 0.95, "auroc_macro_ci_low": 0.93, "auroc_macro_ci_high": 0.97,
    })])
    assert (row["auroc"], row["auroc_ci_low"], row["auroc_ci_high"]) == (0.95, 0.93, 0.97)
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == (0.75, 0.85)
    assert row["modalities"] == "audio+image" and row["n_test"] == 300.0


def test_binary_rows_keep_their_own_auroc() -> None:
    (row,) = _variant_records([_run({"n": 50.0, "auroc": 0.7, "auroc_ci_low": 0.6,
                                      "auroc_ci_high": 0.8, "auroc_macro": 0.1})])
    assert (row["auroc"], row["auroc_ci_low"]) == (0.7, 0.6)
    assert row["accuracy_ci_low"] is None


def test_retrieval_rows_report_recall_at_1_and_median_rank_with_cis() -> None:
    (row,) = _variant_records([_run({
        "n": 150.0, "recall@1": 0.19, "recall@1_ci_low": 0.14, "recall@1_ci_high": 0.25,
        "median_rank": 7.0, "median_rank_ci_low": 5.0, "median_rank_ci_high": 9.5,
        "recall@5": 0.5,
    })])
    assert (row["recall@1"], row["recall@1_ci_low"], row["recall@1_ci_high"]) == (0.19, 0.14,
                                                                               0.25)
    assert (row["median_rank"], row["median_rank_ci_low"], row["median_rank_ci_high"]) == (
        7.0, 5.0, 9.5)
    assert row["auroc"] is None and row["accuracy"] is None
    assert row["warning"] == ""  # a median rank CI 4.5 ranks wide is not "wider than 0.3"
