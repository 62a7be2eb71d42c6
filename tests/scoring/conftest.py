"""Scoring fixtures: one small ingested cohort with every skip reason, a tiny predictor, and
a uniquely named PostgreSQL database per module (real server on 127.0.0.1:5432)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import torch

from fusion.predictor import Predictor
from fusion.tasks import cohort_task
from modalities.ingest import ingest_manifest
from modalities.pseudonym import Pseudonymizer
from synth import synth_cohort
from tests.scoring.helpers import PG, predictor_config, recipe
from tests.torch_threads import one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synth 20 good + 3 bad-CT patients, edit the manifest, ingest; expected skip reasons.

    Session-scoped: the scoring modules share one ingest (tests never modify it).

    Every skip reason occurs: CT quarantined with no note, no usable modality, excluded by
    policy, and a duplicated patient ID.
    """
    root = tmp_path_factory.mktemp("scoring")
    synth = synth_cohort(root / "raw", patients=20, seed=5, bad_inputs=3)
    manifest = pd.read_csv(synth.manifest_path, dtype=str, keep_default_na=False)
    expected_q = pd.read_csv(synth.out / "expected_quarantine.csv", dtype=str)
    pseudo = Pseudonymizer.from_env()
    expected: dict[str, str] = {}
    for _, e in expected_q.iterrows():  # bad CT and no note: nothing left for a CT+note model
        manifest.loc[manifest["patient_id"] == e["patient_id"], "note"] = ""
        expected[pseudo(e["patient_id"])] = f"quarantined: {e['expected_code']}"
    good = manifest.index[:20]
    with_mri = [i for i in good if manifest.at[i, "mri"] != ""]
    no_mod, excl, dup_a, dup_b = with_mri[0], with_mri[1], with_mri[2], with_mri[3]
    manifest.loc[no_mod, ["ct", "note"]] = ""  # MRI only: nothing this model reads
    expected[pseudo(manifest.at[no_mod, "patient_id"])] = "no usable modality"
    manifest.loc[excl, ["ct", "mri", "note"]] = ""  # no input at all: ingest excludes it
    expected[pseudo(manifest.at[excl, "patient_id"])] = "excluded by policy"
    manifest.at[dup_b, "patient_id"] = manifest.at[dup_a, "patient_id"]
    expected[pseudo(manifest.at[dup_a, "patient_id"])] = "quarantined: DUPLICATE_PATIENT"
    manifest.to_csv(synth.manifest_path, index=False)

    cfg, _ = recipe("tiny")
    prepared = root / "prepared"
    ingest_manifest(synth.manifest_path, cfg, synth.out, prepared, chunk_size=8,
                    labels=cohort_task(cfg))
    phi = json.loads((synth.out / "phi.json").read_text())
    return {"prepared": prepared, "expected_skipped": expected, "phi": phi,
            "raw_ids": sorted(set(manifest["patient_id"]))}


@pytest.fixture(scope="session")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(predictor_config(), device="cpu").to_device()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A uniquely named database for this module, dropped at the end."""
    import psycopg2

    name = f"clinfuse_test_scoring_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
