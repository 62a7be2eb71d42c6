"""The Task interface and registry: one class per task owns every task-specific rule.

A task decides how manifest label cells become numbers (ingest calls ``parse_labels``),
which label columns the prepared cohort holds for it, which head and head options a model
gets (number of outputs, class weights), how logits become probabilities, the prior, the
decision rule (threshold or argmax), the output and prediction-table columns, and which
metrics are reported and monitored. Callers look a task up by name (``get_task``) and call
its methods; nothing outside this package compares task names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from fusion.heads import Head, create_head
from fusion.metrics import MetricFn, evaluate_with
from modalities.cohort import CohortConfig, label_cells
from modalities.errors import ConfigError
from modalities.registry import Registry


class Task:
    """Base of all tasks; subclasses are registered with ``@register_task(name)``."""

    name: ClassVar[str]
    head: ClassVar[str]  # registered head name (fusion.heads)
    monitor: ClassVar[str]  # validation metric early stopping watches by default
    monitor_mode: ClassVar[Literal["max", "min"]] = "max"
    # Outputs are per-row probabilities that batch scoring stores and drift tracks.
    scores: ClassVar[bool] = True
    # A one-modality model of the task makes sense (``train --baselines``); not for retrieval,
    # whose loss contrasts two or more towers.
    unimodal: ClassVar[bool] = True
    # The task reads ``cohort.zero_shot`` (class prompts for zero-shot evaluation).
    zero_shot: ClassVar[bool] = False

    # ------------------------------------------------------------------ cohort and labels

    def check_cohort(self, cfg: CohortConfig) -> None:
        """Raise ``ConfigError`` when the cohort's label columns do not suit the task."""

    def label_columns(self, cfg: CohortConfig) -> list[str]:
        """The cohort.parquet label columns training reads (empty: no labels)."""
        return list(cfg.labels)

    def parse_value(self, raw: str, col: str, cfg: CohortConfig) -> float:  # pragma: no cover
        raise NotImplementedError

    def parse_labels(self, row: Mapping[str, str], cfg: CohortConfig) -> list[float] | None:
        """A manifest row's labels as floats (ingest); None when unlabeled; BAD_LABEL when
        a cell breaks the task's rules."""
        cells = label_cells(row, cfg)
        if cells is None:
            return None
        return [self.parse_value(raw, col, cfg) for col, raw in cells.items()]

    def label_array(self, rows: pd.DataFrame, cfg: CohortConfig) -> np.ndarray | None:
        """Labels of cohort rows: (N,) for one label column, (N, L) for several."""
        y = rows[self.label_columns(cfg)].to_numpy(dtype=float)
        return y[:, 0]

    def batch_labels(self, labels: np.ndarray) -> torch.Tensor | None:
        """(B, C) float32 label rows of a batch -> the tensor the head's loss takes."""
        return torch.from_numpy(labels)[:, 0].float()

    def label_names(self, cfg: CohortConfig) -> list[str] | None:
        """Names of the outputs (saved with the model as ``label_names``)."""
        return list(cfg.labels)

    # ------------------------------------------------------------------ head

    def head_options(
        self, cfg: CohortConfig, base: Mapping[str, Any], y_train: np.ndarray | None,
        class_weighting: bool,
    ) -> dict[str, Any]:
        """The head's options: ``base`` (the recipe's), what the task needs, loss weights."""
        opts = dict(base)
        if class_weighting and y_train is not None:
            opts |= self.class_weight_options(y_train)
        return opts

    def class_weight_options(self, y: np.ndarray) -> dict[str, Any]:
        """Inverse-prevalence loss weights for the head (none by default)."""
        return {}

    def build_head(self, d_model: int, modalities: Sequence[str], **options: Any) -> Head:
        """The task's head (``fusion.heads``) with ``options``."""
        return create_head(self.head, d_model, modalities, **options)

    # ------------------------------------------------------------------ outputs

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities (float32)."""
        return logits.float().sigmoid()

    def outputs(self, model_out: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What prediction keeps per row of a model's output (probabilities by default)."""
        return self.probabilities(model_out["logits"])

    def prior(self, y_train: np.ndarray | None) -> Any:
        """What a row without any of the model's modalities is given (training prevalence)."""
        return np.asarray(y_train, dtype=float).mean(0).tolist()

    def per_row(self, probs: np.ndarray) -> np.ndarray:
        """(N, K) probabilities -> the task's per-row shape."""
        return probs

    def fill_missing(
        self, outputs: np.ndarray | None, mask: np.ndarray, prior: Any, dtype: Any = float
    ) -> np.ndarray:
        """Outputs for every row: ``outputs`` where ``mask``, the prior elsewhere."""
        full = np.tile(np.asarray(prior, dtype=dtype).reshape(1, -1), (len(mask), 1))
        if outputs is not None and mask.any():
            full[mask] = np.asarray(outputs).reshape(int(mask.sum()), full.shape[1])
        return self.per_row(full)

    # ------------------------------------------------------------------ decisions

    def choose_threshold(self, y: np.ndarray | None, p: np.ndarray, rule: str) -> float:
        """The decision threshold chosen on validation data (0.5 unless the task tunes it)."""
        return 0.5

    def decide(self, probs: np.ndarray, threshold: float, names: Sequence[str]) -> Any:
        """Per-row decisions (the ``prediction`` column) from (N, K) probabilities."""
        raise NotImplementedError  # pragma: no cover

    def positive(self, probs: np.ndarray, threshold: float) -> np.ndarray:
        """(N, K) 0/1: where the model decides positive per output column (drift rates)."""
        return (probs >= threshold).astype(float)

    # ------------------------------------------------------------------ columns

    def probability_columns(
        self, label_names: Sequence[Any] | None, n: int
    ) -> tuple[list[str], list[str]]:
        """(probability column names, output names) of scored rows; ``n`` outputs."""
        names = [str(x) for x in (label_names or range(n))]
        return [f"probability_{x}" for x in names], names

    def output_frame(
        self, index: pd.Index, probs: np.ndarray, label_names: Sequence[Any] | None,
        threshold: float,
    ) -> pd.DataFrame:
        """Probability and decision columns of a model's output (pyfunc, signature)."""
        p = np.asarray(probs).reshape(len(index), -1)
        cols, names = self.probability_columns(label_names, p.shape[1])
        out = pd.DataFrame(index=index)
        for k, c in enumerate(cols):
            out[c] = p[:, k]
        out["prediction"] = self.decide(p, threshold, names)
        return out

    def prediction_table(
        self, patients: Sequence[str], probs: np.ndarray, labels: np.ndarray | None,
        threshold: float, present: Mapping[str, np.ndarray],
    ) -> pd.DataFrame:
        """The test-split predictions table logged with a run (pseudonyms only)."""
        df = pd.DataFrame({"patient": list(patients)})
        p = np.asarray(probs, dtype=float).reshape(len(df), -1)
        for k in range(p.shape[1]):
            df[f"probability_{k}"] = p[:, k]
        return with_presence(df, present)

    # ------------------------------------------------------------------ metrics

    def metric_fn(self, threshold: Any, label_names: Sequence[str] | None) -> MetricFn:
        raise NotImplementedError  # pragma: no cover

    def extra_metrics(self, threshold: Any) -> dict[str, float]:
        """Descriptive values reported next to the metrics (e.g. the binary threshold)."""
        return {}

    def evaluate(
        self,
        y_true: Any,
        prob: Any,
        threshold: float | Sequence[float] | None = None,
        groups: Mapping[str, Any] | None = None,
        n_boot: int = 1000,
        alpha: float = 0.05,
        seed: int = 0,
        label_names: Sequence[str] | None = None,
        present: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """All metrics as flat, MLflow-ready keys (see ``fusion.metrics.evaluate``)."""
        y = np.asarray(y_true)
        p = np.asarray(prob, dtype=float)
        fn = self.metric_fn(threshold, label_names)
        return evaluate_with(fn, y, p, groups, n_boot, alpha, seed, self.extra_metrics(threshold))


def with_presence(df: pd.DataFrame, present: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Append ``present_<modality>`` bool columns (every task's tables end with them)."""
    for m, p in present.items():
        df[f"present_{m}"] = np.asarray(p, dtype=bool)
    return df


_TASKS: Registry[type[Task]] = Registry("task")
_INSTANCES: dict[str, Task] = {}


def register_task(name: str):
    """Class decorator registering a Task subclass under ``name``."""
    return _TASKS.register(name)


def task_names() -> list[str]:
    """Names of all registered tasks, sorted."""
    return _TASKS.names()


def get_task(task: str | Task) -> Task:
    """The task registered as ``task`` (one shared instance; tasks hold no state).

    An unknown name raises ``UnknownNameError`` listing the valid ones. A Task is returned
    as is, so functions can take either.
    """
    if isinstance(task, Task):
        return task
    if task not in _INSTANCES:
        _INSTANCES[task] = _TASKS.get(task)()
    return _INSTANCES[task]


def cohort_task(cfg: CohortConfig) -> Task:
    """The cohort's task, with its label columns checked (``ConfigError`` otherwise)."""
    task = get_task(cfg.task)
    if cfg.zero_shot is not None and not task.zero_shot:
        raise ConfigError(f"cohort.zero_shot is for the retrieval task, not {cfg.task!r}; "
                          "remove it or set cohort.task: retrieval")
    task.check_cohort(cfg)
    return task


def check_label_count(cfg: CohortConfig, name: str, at_least: int, exactly: bool) -> None:
    """Shared label-column rule: exactly one column, or at least ``at_least``."""
    n = len(cfg.labels)
    if exactly and n != at_least:
        raise ConfigError(f"task {name!r} takes exactly one label column in cohort.labels, "
                          f"got {n}")
    if not exactly and n < at_least:
        raise ConfigError(f"task {name!r} needs two or more label columns in cohort.labels")
