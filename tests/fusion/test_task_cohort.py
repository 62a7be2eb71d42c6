"""A task named in a recipe reaches ingest, splitting and ``train_variant``: a contrastive
cohort of two tabular towers (cheap inline JSON inputs) learns retrieval end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.config import ModelConfig
from fusion.data import PreparedCohort
from fusion.experiment import plan_variants, split_cohort, train_variant
from fusion.tasks import cohort_task
from fusion.train import TrainConfig
from modalities.cohort import CohortConfig
from modalities.ingest import ingest_manifest

N = 160
FEATS = {"labs": [f"l{i}" for i in range(6)], "vitals": [f"v{i}" for i in range(5)]}


def _manifest(path: Path) -> Path:
    """Two tabular views of one latent per patient; a 0/1 label the contrastive task ignores."""
    rng = np.random.default_rng(0)
    mix = {m: rng.normal(size=(3, len(f))) for m, f in FEATS.items()}
    rows = []
    for i in range(N):
        z = rng.normal(size=3)
        row = {"patient_id": f"MRN-{i:04d}", "label": str(int(z[0] > 0))}
        for m, feats in FEATS.items():
            v = z @ mix[m] + 0.05 * rng.normal(size=len(feats))
            row[m] = json.dumps(dict(zip(feats, v.round(4).tolist(), strict=True)))
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _cohort(task: str) -> CohortConfig:
    return CohortConfig(
        task=task,
        modalities={m: {"type": "tabular", "spec": {"features": f},
                        "encoder": {"out_dim": 32, "dropout": 0.0}} for m, f in FEATS.items()},
    )


@pytest.mark.slow
def test_contrastive_recipe_trains_through_train_variant(tmp_path: Path) -> None:
    cfg = _cohort("contrastive")
    manifest = _manifest(tmp_path / "manifest.csv")
    summary = ingest_manifest(manifest, cfg, tmp_path, tmp_path / "prep",
                              labels=cohort_task(cfg))
    assert summary["accepted"] == 2 * N and summary["quarantined"] == 0
    cohort = PreparedCohort(tmp_path / "prep", cfg)
    assert cohort.label_columns == []  # the manifest's label column is ignored
    train_cfg = TrainConfig(max_epochs=8, batch_size=32, lr=3e-3, patience=8, n_boot=0,
                            device="cpu", split_fractions=(0.55, 0.15, 0.3))
    rows = split_cohort(cohort, train_cfg)
    variant = plan_variants(list(cohort.mods), ["concat"], baselines=False)[0]
    model_cfg = ModelConfig(d_model=32, dropout=0.0)
    res = train_variant(cohort, rows, variant, model_cfg, train_cfg)
    assert res.model_config.head.name == "contrastive"
    n_test = int((rows["split"] == "test").sum())
    m = res.test_metrics
    assert m["n"] == n_test and {"labs_to_vitals/recall@1", "vitals_to_labs/median_rank"} <= set(m)
    assert m["recall@1"] > 5 / n_test  # five times chance (1 / n_test)
    assert m["median_rank"] < n_test / 4  # chance: about n_test / 2
    assert "val_recall@1" in res.fit.history[0]
    assert res.artifact.task == "contrastive"
    assert res.artifact.reference is None


@pytest.mark.slow
def test_binary_recipe_keeps_its_metric_keys_and_columns(tmp_path: Path) -> None:
    cfg = _cohort("binary")
    ingest_manifest(_manifest(tmp_path / "manifest.csv"), cfg, tmp_path, tmp_path / "prep",
                    labels=cohort_task(cfg))
    cohort = PreparedCohort(tmp_path / "prep", cfg)
    train_cfg = TrainConfig(max_epochs=2, batch_size=32, n_boot=10, device="cpu")
    rows = split_cohort(cohort, train_cfg)
    variant = plan_variants(list(cohort.mods), ["concat"], baselines=False)[0]
    res = train_variant(cohort, rows, variant, ModelConfig(d_model=16), train_cfg)
    keys = set(res.test_metrics)
    assert {"auroc", "auroc_ci_low", "threshold", "n", "prevalence", "ece"} <= keys
    assert any(k.startswith("present.labs-vitals/") for k in keys)
    assert isinstance(res.artifact.prior, float)
    assert res.artifact.label_names == ["label"]
    table = cohort.task_rules.prediction_table(res.test.patients, res.test.probs,
                                               res.test.labels, res.threshold, res.test.present)
    assert list(table.columns) == ["patient", "label", "probability", "prediction", "threshold",
                                   "present_labs", "present_vitals"]
