"""Issue 12's learning test for classification: `clinfuse demo --task digits` (real CLI,
synth -> ingest -> train -> compare -> score) classifies handwritten + spoken digits with
image+audio fusion above each unimodal baseline, 95% CIs apart, on held-out samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_digits_demo_fusion_beats_each_modality(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "CLINFUSE_PSEUDONYM_KEY", "PREFECT_HOME")}
    res = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "demo", "--task", "digits", "--workdir",
         str(tmp_path), "--json"],
        capture_output=True, text=True, env=env, timeout=900, check=False, cwd=tmp_path,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = json.loads(res.stdout)
    rows = {v["modalities"]: v for v in out["train"]["variants"]}
    assert set(rows) == {"audio+image", "audio", "image"}, rows
    fused = rows["audio+image"]
    assert fused["n_test"] >= 400, fused
    for alone in ("audio", "image"):  # non-overlapping 95% CIs against each baseline
        assert fused["accuracy_ci_low"] > rows[alone]["accuracy_ci_high"], (fused, rows[alone])
    assert fused["auroc"] is not None and fused["auroc"] > 0.9  # macro one-vs-rest AUROC
    assert out["verdict"]["separated"] and "fusion wins" in out["verdict"]["text"]
    assert "accuracy" in res.stderr and "test samples" in res.stderr  # the table (on stderr)
    pred = pd.read_parquet(tmp_path / "predictions" / "predictions.parquet")
    cohort = pd.read_parquet(tmp_path / "prepared" / "cohort.parquet")
    assert len(pred) == len(cohort) and pred["patient"].isin(cohort["patient"]).all()
    probs = pred[[f"probability_{d}" for d in range(10)]].to_numpy()  # one per class
    assert abs(probs.sum(1) - 1).max() < 1e-4 and (probs.argmax(1) == pred["prediction"]).all()
