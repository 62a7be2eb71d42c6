"""Shared e2e data: one synthetic cohort, prepared once per session (domain ingest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modalities.ingest import ingest_rows, plan_ingest, write_prepared
from modalities.synth import synth_cohort
from workflows.config import load_config

E2E_PATIENTS = 72


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
    plan = plan_ingest(manifest, cohort, chunk_size=16)
    outcomes = [
        o
        for rows in plan.chunks
        for o in ingest_rows(manifest, rows, cohort, synthetic_cohort, out, plan.duplicate_rows)
    ]
    summary = write_prepared(out, outcomes, cohort, "e2e")
    assert summary["quarantined"] == 0, summary
    return out
