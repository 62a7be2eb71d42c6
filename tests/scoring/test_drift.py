"""Score distribution and drift: PSI, presence and prior against a training reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.predictor import Predictor
from fusion.reference import score_reference
from scoring import score_cohort
from scoring.drift import psi


def test_drift_against_a_reference(
    cohort: dict, predictor: Predictor, tmp_path: Path
) -> None:
    first = score_cohort(cohort["prepared"], predictor, tmp_path, "drift", "1")
    df = pd.read_parquet(tmp_path / "predictions.parquet")
    same = score_reference(df["probability"].to_numpy(), {"ct": 1.0, "note": 0.5}, 0.4)
    s = score_cohort(cohort["prepared"], predictor, tmp_path, "drift", "1", reference=same)
    assert s.drift["psi"]["probability"] == pytest.approx(0.0, abs=1e-9)
    ct = s.drift["presence"]["ct"]
    assert ct["current"] == pytest.approx(df["present_ct"].mean())
    assert ct["difference"] == pytest.approx(df["present_ct"].mean() - 1.0)
    prior = s.drift["prior"]["probability"]
    assert prior["reference"] == 0.4
    assert prior["difference"] == pytest.approx(df["probability"].mean() - 0.4)
    assert first.drift["prior"]["probability"]["reference"] == 0.3  # the predictor's prior
    assert "psi" not in first.drift  # no reference histogram, no PSI
    shifted = score_reference(np.clip(df["probability"].to_numpy() + 0.3, 0, 1))
    far = score_cohort(cohort["prepared"], predictor, tmp_path, "drift", "1", reference=shifted)
    assert far.drift["psi"]["probability"] > 0.25


def test_psi_basics() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([50, 50, 0], [0, 50, 50]) > 1.0
    assert np.isnan(psi([0, 0], [1, 2]))
