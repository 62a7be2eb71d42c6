"""The README's main command: `clinfuse demo` runs every stage end to end on embedded defaults
and shows fusion beating every unimodal baseline with non-overlapping 95% CIs.

The demo's cohort is the interaction cohort (CT lesion XOR note finding), so this test also
carries part of tests/e2e/test_fusion_interaction.py: the demo's two fusion models (concat,
cross_attention) must learn the interaction and its two unimodal baselines must stay at
chance; the interaction test covers the other strategies (one training per variant, not two).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

LEARN = {"concat", "cross_attention"}  # workflows.demo.DEMO_FUSIONS
CHANCE = {"unimodal_ct", "unimodal_note"}


def test_demo_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "CLINFUSE_PSEUDONYM_KEY", "PREFECT_HOME")}
    res = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "demo", "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, env=env, timeout=1800, check=False, cwd=tmp_path,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = res.stderr  # with --json the stage lines and tables go to stderr
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
    summary = json.loads(res.stdout)
    assert summary["verdict"]["separated"] is True
    variants = {v["variant"]: v for v in summary["train"]["variants"]}
    assert set(variants) == LEARN | CHANCE
    table = {k: round(v["auroc"], 3) for k, v in variants.items()}
    for name in LEARN:  # the interaction is learnt from the DICOM series and the note text
        assert variants[name]["auroc"] >= 0.80, (name, table)
    for name in CHANCE:  # +-3 SD of a chance AUROC on ~48 test patients
        assert 0.25 <= variants[name]["auroc"] <= 0.75, (name, table)
    assert (tmp_path / "mlflow.db").exists()
    pred = pd.read_parquet(tmp_path / "predictions" / "predictions.parquet")
    cohort = pd.read_parquet(tmp_path / "prepared" / "cohort.parquet")
    assert len(pred) > 0 and pred["patient"].isin(cohort["patient"]).all()
