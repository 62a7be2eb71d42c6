"""Evaluation metrics, split by concern (docs/metrics.md has the definitions):

- ``point``: point estimates per task (binary, multiclass, multilabel), calibration table;
- ``thresholds``: decision-threshold rules chosen on validation data;
- ``bootstrap``: percentile bootstrap CIs, vectorised over resamples;
- ``subgroups``: per presence-pattern / subgroup metrics and the flat MLflow key layout;
- ``retrieval``: Recall@K and median rank for the retrieval (contrastive) task.

Which metrics a task reports is the task's decision: ``fusion.tasks.evaluate(task, ...)``
(or ``get_task(name).evaluate``) gives a task's metrics; this package knows no task names
(and imports no task, so the two packages stay acyclic).
"""

from __future__ import annotations

from fusion.metrics.bootstrap import bootstrap_ci
from fusion.metrics.core import ECE_BINS, MIN_SUBGROUP_SIZE, MLFLOW_KEY, MetricDict, MetricFn
from fusion.metrics.point import (
    binary_metrics,
    calibration_table,
    multiclass_metrics,
    multilabel_metrics,
)
from fusion.metrics.retrieval import RECALL_AT, retrieval_metrics, retrieval_ranks
from fusion.metrics.subgroups import evaluate_with, presence_pattern, subgroup_key
from fusion.metrics.thresholds import TARGET_RULES, THRESHOLD_RULES, choose_threshold

__all__ = [
    "ECE_BINS",
    "MIN_SUBGROUP_SIZE",
    "MLFLOW_KEY",
    "RECALL_AT",
    "TARGET_RULES",
    "THRESHOLD_RULES",
    "MetricDict",
    "MetricFn",
    "binary_metrics",
    "bootstrap_ci",
    "calibration_table",
    "choose_threshold",
    "evaluate_with",
    "multiclass_metrics",
    "multilabel_metrics",
    "presence_pattern",
    "retrieval_metrics",
    "retrieval_ranks",
    "subgroup_key",
]
