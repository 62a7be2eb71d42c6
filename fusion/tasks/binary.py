"""Binary classification: one 0/1 label column, one logit, a threshold tuned on validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.metrics import MetricFn, binary_metrics, choose_threshold
from fusion.tasks.base import Task, check_label_count, register_task, with_presence
from modalities.cohort import CohortConfig, flag_value


@register_task("binary")
class BinaryTask(Task):
    """Labels 0/1 (true/false, yes/no, positive/negative); BCE head with ``pos_weight``;
    sigmoid probability (N,); predict positive when probability >= the threshold chosen on
    validation by ``train.threshold_rule``; prior = training prevalence (a float)."""

    head = "binary"
    monitor = "auroc"

    def check_cohort(self, cfg: CohortConfig) -> None:
        check_label_count(cfg, self.name, 1, exactly=True)

    def parse_value(self, raw: str, col: str, cfg: CohortConfig) -> float:
        return flag_value(raw, col)

    def class_weight_options(self, y: np.ndarray) -> dict[str, Any]:
        pos = float(y.sum())
        return {"pos_weight": (len(y) - pos) / pos} if 0 < pos < len(y) else {}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid().reshape(-1)

    def prior(self, y_train: np.ndarray | None) -> float:
        return float(np.asarray(y_train, dtype=float).reshape(-1).mean())

    def per_row(self, probs: np.ndarray) -> np.ndarray:
        return probs[:, 0]

    def choose_threshold(self, y: np.ndarray | None, p: np.ndarray, rule: str) -> float:
        if y is None or len(np.unique(y)) != 2:
            return 0.5
        return choose_threshold(y, p, rule)

    def decide(self, probs: np.ndarray, threshold: float, names: Sequence[str]) -> np.ndarray:
        return (np.asarray(probs).reshape(len(probs), -1)[:, 0] >= threshold).astype(np.int64)

    def probability_columns(
        self, label_names: Sequence[Any] | None, n: int
    ) -> tuple[list[str], list[str]]:
        return ["probability"], ["probability"]

    def output_frame(
        self, index: pd.Index, probs: np.ndarray, label_names: Sequence[Any] | None,
        threshold: float,
    ) -> pd.DataFrame:
        out = super().output_frame(index, probs, label_names, threshold)
        out["threshold"] = threshold
        return out

    def prediction_table(
        self, patients: Sequence[str], probs: np.ndarray, labels: np.ndarray | None,
        threshold: float, present: Mapping[str, np.ndarray],
    ) -> pd.DataFrame:
        p = np.asarray(probs, dtype=float).reshape(-1)
        df = pd.DataFrame({"patient": list(patients)})
        df["label"] = labels
        df["probability"] = p
        df["prediction"] = (p >= threshold).astype(int)
        df["threshold"] = threshold
        return with_presence(df, present)

    def metric_fn(self, threshold: Any, label_names: Sequence[str] | None) -> MetricFn:
        return partial(binary_metrics, threshold=0.5 if threshold is None else float(threshold))

    def extra_metrics(self, threshold: Any) -> dict[str, float]:
        return {"threshold": 0.5 if threshold is None else float(threshold)}
