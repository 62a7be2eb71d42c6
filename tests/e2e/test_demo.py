"""The README's main command: `clinfuse demo` runs every stage end to end on embedded defaults
and shows fusion beating every unimodal baseline with non-overlapping 95% CIs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_demo_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "CLINFUSE_PSEUDONYM_KEY", "PREFECT_HOME")}
    res = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "demo", "--workdir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=1800, check=False, cwd=tmp_path,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = res.stdout
    for stage in ("synth", "ingest", "re-ingest", "train", "score", "mlflow ui"):
        assert stage in out, (stage, out[-3000:])
    # Promotion follows the CI rule: a champion, or an honest refusal when the two fusion
    # models' CIs overlap (then the challenger scores).
    assert "champion" in out or "not promoted:" in out, out[-3000:]
    # The point of the demo: fusion beats every unimodal baseline, CIs apart, and the table
    # says how many test patients each number rests on.
    assert "95% CIs do not overlap: fusion wins" in out, out[-3000:]
    n_test = re.search(r"(\d+) test patients: 95% CIs", out)
    assert "test patients" in out and n_test and int(n_test.group(1)) >= 30, out[-3000:]
    assert (tmp_path / "mlflow.db").exists()
    pred = pd.read_parquet(tmp_path / "predictions" / "predictions.parquet")
    cohort = pd.read_parquet(tmp_path / "prepared" / "cohort.parquet")
    assert len(pred) > 0 and pred["patient"].isin(cohort["patient"]).all()
