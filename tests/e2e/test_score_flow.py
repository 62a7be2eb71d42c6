"""Scoring with the registered champion through the CLI: exactly-once Parquet + PostgreSQL,
a Dask LocalCluster run equal to the local one, and a PHI canary over every output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from tests.e2e.conftest import MODEL, clinfuse
from tests.servers import postgres_database

pytestmark = pytest.mark.slow


# Trust auth ignores it; it stands for a real password that must never reach Prefect.
DB_PASSWORD = "canary-score-e2e-password"


@pytest.fixture(scope="module")
def db_url() -> str:
    with postgres_database("clinfuse_score_e2e") as url:
        yield url.replace("://postgres@", f"://postgres:{DB_PASSWORD}@", 1)


@pytest.fixture(scope="module")
def scored(trained: dict, prepared_cohort: Path, mlflow_server: str, db_url: str,
           tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("score")
    env = {"PREFECT_HOME": str(work / "prefect")}
    args = ["score", str(prepared_cohort), "--out", str(work / "pred"), "--model",
            f"models:/{MODEL}@champion", "--db-url", db_url, "--workdir", str(work), "--json"]
    first = clinfuse(*args, tracking_uri=mlflow_server, cwd=work, env=env)
    second = clinfuse(*args, tracking_uri=mlflow_server, cwd=work, env=env)
    dask = clinfuse("score", str(prepared_cohort), "--out", str(work / "pred_dask"), "--model",
                    f"models:/{MODEL}@champion", "--dask", "local", "--shards", "2",
                    "--workdir", str(work), "--json", tracking_uri=mlflow_server, cwd=work, env=env)
    return {"work": work, "runs": [first, second, dask],
            "summaries": [json.loads(r.stdout) for r in (first, second, dask)]}


def test_every_eligible_patient_scored_once(scored: dict, prepared_cohort: Path) -> None:
    first, second, _ = scored["summaries"]
    cohort = pd.read_parquet(prepared_cohort / "cohort.parquet")
    assert first["scored_now"] == first["eligible"] > 0
    assert first["eligible"] + len(first["skipped"]) == len(cohort)
    assert second["scored_now"] == 0 and second["already_scored"] == first["eligible"]
    pred = pd.read_parquet(scored["work"] / "pred" / "predictions.parquet")
    assert len(pred) == first["eligible"] and pred["patient"].is_unique
    assert pred["probability"].between(0, 1).all()
    assert first["mlflow_run_id"]


def test_postgres_table_matches_parquet(scored: dict, db_url: str) -> None:
    pred = pd.read_parquet(scored["work"] / "pred" / "predictions.parquet")
    dsn = db_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT patient, model_version, input_hash, probability "
                    "FROM clinfuse_predictions")
        rows = cur.fetchall()
    db = pd.DataFrame(rows, columns=["patient", "model_version", "input_hash", "probability"])
    merged = pred.merge(db, on=["patient", "model_version", "input_hash"],
                        suffixes=("", "_db"), validate="one_to_one")
    assert len(db) == len(pred) == len(merged)
    assert (merged["probability"] - merged["probability_db"]).abs().max() < 1e-6


def test_dask_local_cluster_gives_same_predictions(scored: dict) -> None:
    local = pd.read_parquet(scored["work"] / "pred" / "predictions.parquet")
    dask = pd.read_parquet(scored["work"] / "pred_dask" / "predictions.parquet")
    key = ["patient", "model_version", "input_hash"]
    merged = local.merge(dask, on=key, suffixes=("", "_dask"), validate="one_to_one")
    assert len(merged) == len(local) == len(dask)
    assert (merged["probability"] - merged["probability_dask"]).abs().max() < 1e-5
    assert scored["summaries"][2]["scored_now"] == len(dask)


def test_phi_canary_over_scoring(scored: dict, synthetic_cohort: Path) -> None:
    phi = json.loads((synthetic_cohort / "phi.json").read_text())
    needles = {v for k in ("names", "dicom_names", "mrns", "birth_dates", "phones")
               for v in phi[k] if len(v) >= 5}
    needles |= set(pd.read_csv(synthetic_cohort / "manifest.csv", dtype=str)["patient_id"])
    blobs = {str(p): p.read_bytes() for p in scored["work"].rglob("*") if p.is_file()}
    assert any(p.endswith("prefect.db") for p in blobs), "Prefect's database was not found"
    for i, r in enumerate(scored["runs"]):
        blobs[f"cli{i}"] = (r.stdout + r.stderr).encode()
    needles.add(DB_PASSWORD)  # --db-url reaches the tasks through the environment only
    leaks = [(n, k) for k, b in blobs.items() for n in needles if n.encode() in b]
    assert not leaks, leaks[:5]
