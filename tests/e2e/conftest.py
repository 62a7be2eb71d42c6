"""Shared e2e data: one synthetic cohort, prepared once per session (domain ingest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modalities.ingest import ingest_manifest
from synth import synth_cohort
from workflows.config import load_config

E2E_PATIENTS = 72
MODEL = "e2e-fusion"
EXPERIMENT = "e2e-train"


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e-synth")
    synth_cohort(out, patients=E2E_PATIENTS, seed=11)
    return out


@pytest.fixture(scope="session")
def prepared_cohort(synthetic_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic cohort ingested with the tiny recipe (in-process, no Prefect)."""
    out = tmp_path_factory.mktemp("e2e-prepared")
    cohort = load_config("tiny").cohort
    manifest = synthetic_cohort / "manifest.csv"
    summary = ingest_manifest(manifest, cohort, synthetic_cohort, out, chunk_size=16)
    assert summary["quarantined"] == 0, summary
    return out


def clinfuse(
    *args: str, tracking_uri: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess against ``tracking_uri``; fail with its stderr."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PREFECT_LOGGING_LEVEL": "INFO",
           **(env or {})}
    res = subprocess.run(
        [sys.executable, "-m", "workflows.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=1500, check=False,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.fixture(scope="session")
def trained(prepared_cohort: Path, mlflow_server: str, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("train-work")
    train = clinfuse(
        "train", str(prepared_cohort), "--config", "tiny", "--fusion", "concat",
        "--fusion", "cross_attention", "--baselines", "--experiment", EXPERIMENT,
        "--register", MODEL, "--set", "train.max_epochs=5", "--set", "train.n_boot=100",
        "--workdir", str(work), "--json", tracking_uri=mlflow_server, cwd=work,
    )
    # ~11 test patients: the best run's CI overlaps the runner-up's, so promotion needs
    # --force (the refusal itself is tested in tests/registry/test_compare.py)
    compare = clinfuse(
        "compare", "--experiment", EXPERIMENT, "--promote", MODEL, "--force", "--workdir",
        str(work), "--json", tracking_uri=mlflow_server, cwd=work,
    )
    return {"train": train, "compare": compare, "work": work,
            "summary": json.loads(train.stdout), "comparison": json.loads(compare.stdout)}
