"""Tasks, one per file (binary, multiclass, multilabel, and retrieval in contrastive.py,
also registered under its earlier name ``contrastive``). Importing this package registers
all of them; the list below is checked by a test so an import that silently fails to
register one is caught. ``get_task(name)`` looks one up (an unknown name lists the valid
ones); ``cohort_task(cfg)`` also checks the cohort's label columns against the task."""

from collections.abc import Mapping, Sequence
from typing import Any

from fusion.tasks import binary, contrastive, multiclass, multilabel  # noqa: F401 (registration)
from fusion.tasks.base import Task, cohort_task, get_task, register_task, task_names

EXPECTED_TASKS = ["binary", "contrastive", "multiclass", "multilabel", "retrieval"]



def evaluate(
    task: str | Task,
    y_true: Any,
    prob: Any,
    threshold: float | Sequence[float] | None = None,
    groups: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    label_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """All metrics of ``task`` (a registered name) as flat, MLflow-ready keys.

    ``<metric>`` and, with ``n_boot > 0``, ``<metric>_ci_low`` / ``<metric>_ci_high``; the
    threshold used (binary); and for each group column, e.g. ``groups={"present": patterns}``,
    ``<group>.<value>/<metric>`` point estimates for every value with >= 10 rows and more than
    one class (``fusion.metrics.subgroup_key``). ``threshold`` defaults to 0.5 and should be
    chosen on validation data (``Task.choose_threshold``). An unknown task lists the valid ones.
    """
    return get_task(task).evaluate(
        y_true, prob, threshold=threshold, groups=groups, n_boot=n_boot, alpha=alpha,
        seed=seed, label_names=label_names,
    )


__all__ = ["EXPECTED_TASKS", "Task", "cohort_task", "evaluate", "get_task", "register_task",
           "task_names"]
