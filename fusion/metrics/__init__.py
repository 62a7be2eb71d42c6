"""Evaluation metrics, split by concern (docs/metrics.md has the definitions):

- ``point``: point estimates per task (binary, multiclass, multilabel), calibration table;
- ``thresholds``: decision-threshold rules chosen on validation data;
- ``bootstrap``: percentile bootstrap CIs, vectorised over resamples;
- ``subgroups``: per presence-pattern / subgroup metrics and the flat MLflow key layout;
- ``retrieval``: Recall@K and median rank for the contrastive task.

Which metrics a task reports is the task's decision (``fusion.tasks``); ``evaluate`` here
looks the task up by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
    """All metrics of task ``task`` (a registered task name) as flat, MLflow-ready keys.

    ``<metric>`` and, with ``n_boot > 0``, ``<metric>_ci_low`` / ``<metric>_ci_high``; the
    threshold used (binary); and for each group column, e.g. ``groups={"present": patterns}``,
    ``<group>.<value>/<metric>`` point estimates for every value with >= 10 rows and more than
    one class (see ``subgroup_key``). ``threshold`` defaults to 0.5 and should be chosen on
    validation data with ``choose_threshold``. An unknown task lists the valid ones.
    """
    from fusion.tasks import get_task  # the task owns its metrics; tasks import this package

    return get_task(task).evaluate(
        y_true, prob, threshold=threshold, groups=groups, n_boot=n_boot, alpha=alpha,
        seed=seed, label_names=label_names,
    )


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
    "evaluate",
    "evaluate_with",
    "multiclass_metrics",
    "multilabel_metrics",
    "presence_pattern",
    "retrieval_metrics",
    "retrieval_ranks",
    "subgroup_key",
]
