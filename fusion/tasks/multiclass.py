"""Multiclass classification: one class column (names in ``cohort.classes`` or 0..K-1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fusion.metrics import MetricFn, multiclass_metrics
from fusion.tasks.base import Task, check_label_count, register_task
from modalities.cohort import CohortConfig, class_index


@register_task("multiclass")
class MulticlassTask(Task):
    """Labels are class indices; cross-entropy head with ``class_weights``; softmax (N, K);
    the decision is the argmax; prior = training class frequencies."""

    head = "multiclass"
    monitor = "auroc_macro"

    def check_cohort(self, cfg: CohortConfig) -> None:
        check_label_count(cfg, self.name, 1, exactly=True)

    def parse_value(self, raw: str, col: str, cfg: CohortConfig) -> float:
        return class_index(raw, cfg.classes, col)

    def batch_labels(self, labels: np.ndarray) -> torch.Tensor | None:
        return torch.from_numpy(labels)[:, 0].long()

    def label_names(self, cfg: CohortConfig) -> list[str] | None:
        return cfg.classes or None

    def head_options(
        self, cfg: CohortConfig, base: Mapping[str, Any], y_train: np.ndarray | None,
        class_weighting: bool,
    ) -> dict[str, Any]:
        opts = dict(base)
        opts.setdefault("num_classes", len(cfg.classes or []) or int(np.nanmax(y_train)) + 1)
        return super().head_options(cfg, opts, y_train, class_weighting)

    def class_weight_options(self, y: np.ndarray) -> dict[str, Any]:
        counts = np.bincount(y.astype(int)).astype(float)
        if (counts == 0).any():
            return {}
        return {"class_weights": (counts.sum() / (len(counts) * counts)).tolist()}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)

    def prior(self, y_train: np.ndarray | None) -> list[float]:
        y = np.asarray(y_train).astype(int)
        return (np.bincount(y) / len(y)).tolist()

    def decide(self, probs: np.ndarray, threshold: float, names: Sequence[str]) -> np.ndarray:
        return np.asarray(probs).argmax(1).astype(np.int64)

    def positive(self, probs: np.ndarray, threshold: float) -> np.ndarray:
        return np.eye(probs.shape[1])[probs.argmax(1)] if len(probs) else probs

    def metric_fn(self, threshold: Any, label_names: Sequence[str] | None) -> MetricFn:
        return multiclass_metrics
