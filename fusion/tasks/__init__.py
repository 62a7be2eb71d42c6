"""Tasks, one per file (binary, multiclass, multilabel, contrastive). Importing this package
registers all of them; the list below is checked by a test so an import that silently fails
to register one is caught. ``get_task(name)`` looks one up (an unknown name lists the valid
ones); ``cohort_task(cfg)`` also checks the cohort's label columns against the task."""

from fusion.tasks import binary, contrastive, multiclass, multilabel  # noqa: F401 (registration)
from fusion.tasks.base import Task, cohort_task, get_task, register_task, task_names

EXPECTED_TASKS = ["binary", "contrastive", "multiclass", "multilabel"]

__all__ = ["EXPECTED_TASKS", "Task", "cohort_task", "get_task", "register_task", "task_names"]
