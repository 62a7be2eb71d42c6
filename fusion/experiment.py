"""Training one model variant on a prepared cohort, tracking-agnostic.

A variant is a fusion strategy over a set of modalities; a unimodal baseline is the same
code with one modality. Every variant of an experiment shares one patient-level split so
the comparison is fair. ``registry.experiment`` wraps this with MLflow tracking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fusion.artifact import ModelArtifact
from fusion.config import ModelConfig
from fusion.data import Collator, PreparedCohort
from fusion.metrics import presence_pattern
from fusion.model import FusionModel, build_model
from fusion.reference import score_reference
from fusion.splits import assign_splits, check_no_leakage
from fusion.train import (
    FitResult,
    Predictions,
    TrainConfig,
    fit,
    make_loader,
    predict,
    resolve_device,
    seed_everything,
)
from fusion.zero_shot import zero_shot_metrics
from modalities.cohort_table import CohortTable
from modalities.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """One model of an experiment: its run name, fusion strategy and modalities."""

    name: str
    fusion: str
    modalities: tuple[str, ...]

    @property
    def unimodal(self) -> bool:
        return len(self.modalities) == 1


def plan_variants(
    modalities: list[str], fusions: list[str], baselines: bool, unimodal_fusion: str = "concat"
) -> list[Variant]:
    """Fusion variants over all modalities, plus one unimodal baseline per modality."""
    mods = tuple(sorted(modalities))
    if len(mods) < 2 and fusions:
        fusions = []  # fusion needs two modalities: a one-modality cohort is a baseline
        baselines = True
    out = [Variant(f"{f}", f, mods) for f in fusions]
    if baselines:
        out += [Variant(f"unimodal_{m}", unimodal_fusion, (m,)) for m in mods]
    if not out:
        raise ConfigError("nothing to train: give --fusion NAME and/or --baselines")
    return out


def split_cohort(cohort: PreparedCohort, cfg: TrainConfig) -> pd.DataFrame:
    """Usable labeled rows with a ``split`` column (manifest splits kept, rest stratified)."""
    rows = cohort.usable(list(cohort.mods))
    labels = cohort.task_rules.label_array(rows, cohort.cfg)
    existing = [s if isinstance(s, str) else None for s in rows["split"]]
    rows = rows.assign(
        split=assign_splits(rows["patient"], labels, cfg.split_fractions, cfg.seed, existing)
    )
    check_no_leakage(rows["patient"].tolist(), rows["split"].tolist())
    for s in ("train", "val", "test"):
        if not (rows["split"] == s).any():
            raise ConfigError(
                f"the {s} split is empty ({len(rows)} usable labeled patients); add patients "
                "or change train.split_fractions"
            )
    return rows


def model_config_for(
    cohort: PreparedCohort, base: ModelConfig, variant: Variant, train_labels: np.ndarray,
    class_weighting: bool,
) -> ModelConfig:
    """The variant's model config: its fusion name, the task's head and loss weights."""
    task = cohort.task_rules
    head_opts = task.head_options(cohort.cfg, base.head.options, train_labels, class_weighting)
    fusion = base.fusion.model_copy(update={"name": variant.fusion})
    head = base.head.model_copy(update={"name": task.head, "options": head_opts})
    return base.model_copy(update={"fusion": fusion, "head": head})


@dataclass
class VariantResult:
    """Everything a tracker logs about one trained variant."""

    variant: Variant
    model: FusionModel
    model_config: ModelConfig
    artifact: ModelArtifact
    fit: FitResult
    threshold: float
    test: Predictions
    test_metrics: dict[str, float]
    prior: Any
    extras: dict[str, Any] = field(default_factory=dict)


def _labels(cohort: PreparedCohort, rows: pd.DataFrame) -> np.ndarray | None:
    return cohort.task_rules.label_array(rows, cohort.cfg)


def train_variant(
    cohort: PreparedCohort,
    rows: pd.DataFrame,
    variant: Variant,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> VariantResult:
    """Train ``variant`` on ``rows``' train split, early-stop on val, evaluate on test.

    Training uses rows with at least one of the variant's modalities; validation and test
    use every row of their split (rows with none of the variant's modalities get the
    training prior), so all variants are scored on the same patients.
    """
    seed_everything(train_cfg.seed)
    device = resolve_device(train_cfg.device)
    task = cohort.task_rules
    mods = {m: cohort.mods[m] for m in variant.modalities}
    has_any = CohortTable.any_ok(rows, variant.modalities)
    train_rows = rows[(rows["split"] == "train") & has_any]
    y_train = _labels(cohort, train_rows)
    prior = task.prior(y_train)
    mcfg = model_config_for(cohort, model_cfg, variant, y_train, train_cfg.class_weighting)
    model = build_model(mcfg, {m: mods[m].encoder() for m in variant.modalities})
    collate = Collator(mods, task)

    def loader(split: str, shuffle: bool, subset: np.ndarray | None = None):
        sel = rows["split"] == split
        if subset is not None:
            sel &= subset
        return make_loader(cohort.dataset(rows[sel], variant.modalities), collate, train_cfg,
                           shuffle, device), rows[sel]

    train_loader, _ = loader("train", True, has_any)
    val_loader, _ = loader("val", False, has_any)

    names = task.label_names(cohort.cfg)

    def validate(pred: Predictions) -> dict[str, float]:
        return task.evaluate(pred.labels, pred.probs, n_boot=0, label_names=names,
                             present=pred.present)

    result = fit(model, train_loader, val_loader, train_cfg, task, validate, on_epoch)
    val_pred = predict(model, val_loader, task, device, train_cfg.bf16)
    threshold = task.choose_threshold(val_pred.labels, val_pred.probs, train_cfg.threshold_rule)
    test = _predict_all(model, cohort, rows[rows["split"] == "test"], variant, collate,
                        train_cfg, device, prior)
    metrics = task.evaluate(
        test.labels, test.probs, threshold=threshold,
        groups={"present": presence_pattern(test.present)},
        n_boot=train_cfg.n_boot, seed=train_cfg.seed, label_names=names, present=test.present,
    )
    metrics |= zero_shot_metrics(model, cohort.cfg, mods, rows[rows["split"] == "test"], test,
                                 collate, device, task, train_cfg.n_boot, train_cfg.seed)
    artifact = ModelArtifact.build(
        cohort.cfg, mcfg, variant.modalities, threshold=threshold,
        prior=0.5 if prior is None else prior,  # contrastive: no prior (nothing scores it)
        label_names=names,
        # Drift reference for scoring: the test split's score histogram and presence rates.
        reference=score_reference(
            test.probs, {m: float(np.mean(p)) for m, p in test.present.items()}, prior
        ) if task.scores else None,
    )
    return VariantResult(variant, model, mcfg, artifact, result, threshold, test, metrics,
                         prior)


def _predict_all(
    model: FusionModel, cohort: PreparedCohort, rows: pd.DataFrame, variant: Variant,
    collate: Collator, cfg: TrainConfig, device: Any, prior: Any,
) -> Predictions:
    """Predict every row; rows without any of the variant's modalities get the prior."""
    task = cohort.task_rules
    has_any = CohortTable.any_ok(rows, variant.modalities)
    all_present = cohort.dataset(rows, list(cohort.mods)).presence()
    labels = _labels(cohort, rows)
    part = None
    if has_any.any():
        part = predict(model, make_loader(cohort.dataset(rows[has_any], variant.modalities),
                                          collate, cfg, False, device),
                       task, device, cfg.bf16).probs
    probs = task.fill_missing(part, has_any, prior)
    return Predictions(rows["patient"].astype(str).tolist(), probs, labels, all_present)
