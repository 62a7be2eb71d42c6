"""Multilabel classification: two or more 0/1 label columns, one sigmoid per label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.metrics import MetricFn, multilabel_metrics
from fusion.tasks.base import Task, check_label_count, register_task
from modalities.cohort import CohortConfig, flag_value


@register_task("multilabel")
class MultilabelTask(Task):
    """Labels (N, L) 0/1; BCE head with per-label ``pos_weight``; sigmoid (N, L); each label
    is decided on its own at the threshold (the prediction is the comma-joined positive
    label names); prior = per-label training prevalence."""

    head = "multilabel"
    monitor = "auroc_macro"

    def check_cohort(self, cfg: CohortConfig) -> None:
        check_label_count(cfg, self.name, 2, exactly=False)

    def parse_value(self, raw: str, col: str, cfg: CohortConfig) -> float:
        return flag_value(raw, col)

    def label_array(self, rows: pd.DataFrame, cfg: CohortConfig) -> np.ndarray | None:
        return rows[self.label_columns(cfg)].to_numpy(dtype=float)

    def batch_labels(self, labels: np.ndarray) -> torch.Tensor | None:
        return torch.from_numpy(labels).float()

    def head_options(
        self, cfg: CohortConfig, base: Mapping[str, Any], y_train: np.ndarray | None,
        class_weighting: bool,
    ) -> dict[str, Any]:
        opts = dict(base)
        opts.setdefault("labels", list(cfg.labels))
        return super().head_options(cfg, opts, y_train, class_weighting)

    def class_weight_options(self, y: np.ndarray) -> dict[str, Any]:
        pos = y.sum(0)
        if (pos == 0).any() or (pos == len(y)).any():
            return {}
        return {"pos_weight": ((len(y) - pos) / pos).tolist()}

    def decide(self, probs: np.ndarray, threshold: float, names: Sequence[str]) -> list[str]:
        return [",".join(n for n, p in zip(names, row, strict=True) if p >= threshold)
                for row in np.asarray(probs)]

    def metric_fn(self, threshold: Any, label_names: Sequence[str] | None) -> MetricFn:
        t = 0.5 if threshold is None else threshold
        return partial(multilabel_metrics, thresholds=t, label_names=label_names)
