"""Batch scoring: exactly-once, resumable predictions to Parquet and a real PostgreSQL.

One small synthetic cohort is ingested with the real ingest (tiny config, tiny random note
encoder), with edits to the manifest so every skip reason occurs: CT quarantined with no
note, no usable modality, excluded by policy, and a duplicated patient ID. Each test
scores into its own folder under its own model name (the input hash covers the model
name, so tests sharing the module's database never share keys).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from fusion.artifact import ModelArtifact
from fusion.data import PreparedCohort
from fusion.predictor import Predictor
from fusion.scoring import (
    TABLE,
    ScoringError,
    consolidate,
    input_hash,
    psi,
    score_cohort,
    score_reference,
)
from modalities.errors import ConfigError
from modalities.ingest import ingest_manifest
from modalities.pseudonym import Pseudonymizer
from modalities.synth import synth_cohort
from workflows.config import load_config

REPO = Path(__file__).resolve().parents[2]
MODS = ["ct", "note"]
OVERRIDES = ["cohort.modalities.note.encoder.model=tiny-random"]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synth 20 good + 3 bad-CT patients, edit the manifest, ingest; expected skip reasons."""
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

    cfg = load_config("tiny", OVERRIDES).cohort
    prepared = root / "prepared"
    ingest_manifest(synth.manifest_path, cfg, synth.out, prepared, chunk_size=8)
    phi = json.loads((synth.out / "phi.json").read_text())
    return {"prepared": prepared, "expected_skipped": expected, "phi": phi,
            "raw_ids": sorted(set(manifest["patient_id"]))}


def predictor_config(modalities: list[str] = MODS) -> dict[str, Any]:
    """A predictor config built the way ``train_variant`` builds one (``ModelArtifact``)."""
    cfg = load_config("tiny", OVERRIDES)
    return ModelArtifact.build(cfg.cohort, cfg.model, modalities, prior=0.3,
                               label_names=["label"]).to_config()


@pytest.fixture(scope="module")
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


def db_rows(url: str, model_name: str) -> pd.DataFrame:
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT patient, model_version, input_hash, probability, prediction, "
                    f"present_ct, present_note FROM {TABLE} WHERE model_name = %s",
                    (model_name,))
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
    conn.close()
    return pd.DataFrame(rows, columns=cols)


def eligible_rows(prepared: Path) -> pd.DataFrame:
    """Independent expectation: not excluded, CT or note accepted."""
    f = pd.read_parquet(prepared / "cohort.parquet")
    ok = (f["ct_status"] == "ok") | (f["note_status"] == "ok")
    return f[~f["excluded"] & ok].reset_index(drop=True)


def assert_db_equals_parquet(url: str, out: Path, model_name: str) -> None:
    pq_df = pd.read_parquet(out / "predictions.parquet")
    pq_df = pq_df[pq_df["model_name"] == model_name]
    db = db_rows(url, model_name)
    key = ["patient", "model_version", "input_hash"]
    assert not db.duplicated(key).any() and not pq_df.duplicated(key).any()
    merged = pq_df.merge(db, on=key, how="outer", suffixes=("", "_db"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged["_merge"].value_counts()
    np.testing.assert_allclose(merged["probability"], merged["probability_db"], rtol=0,
                               atol=1e-12)
    assert (merged["prediction"].astype(str) == merged["prediction_db"]).all()
    assert (merged["present_ct"] == merged["present_ct_db"]).all()


# --------------------------------------------------------------------------- tests


def test_scores_every_eligible_patient_once_and_reports_skips(
    cohort: dict, predictor: Predictor, tmp_path: Path, pg_url: str
) -> None:
    prepared = cohort["prepared"]
    calls: list[tuple[int, int]] = []
    s = score_cohort(prepared, predictor, tmp_path, "first", "1", batch_size=4, db_url=pg_url,
                     progress=lambda d, t: calls.append((d, t)))
    want = eligible_rows(prepared)
    assert s.eligible == s.scored_now == len(want) and s.already_scored == 0
    assert calls[-1] == (len(want), len(want))
    df = pd.read_parquet(tmp_path / "predictions.parquet")
    assert sorted(df["patient"]) == sorted(want["patient"])
    assert list(df.columns) == ["patient", "model_name", "model_version", "input_hash",
                                "probability", "prediction", "threshold", "present_ct",
                                "present_note", "scored_at"]
    assert str(df["scored_at"].dt.tz) == "UTC"
    assert ((df["prediction"] == 1) == (df["probability"] >= 0.5)).all()
    by_patient = want.set_index("patient")
    for _, r in df.iterrows():
        row = by_patient.loc[r["patient"]]
        keys = {m: row[f"{m}_key"] if row[f"{m}_status"] == "ok" else None for m in MODS}
        assert r["input_hash"] == input_hash(keys, "first", "1")
        assert r["present_ct"] == (row["ct_status"] == "ok")
        assert r["present_note"] == (row["note_status"] == "ok")
    # Nobody silently dropped: every skip has the reason we planted.
    assert {x["patient"]: x["reason"] for x in s.skipped} == cohort["expected_skipped"]
    assert sum(s.skipped_by_reason.values()) == len(s.skipped)
    assert s.skipped_by_reason["excluded by policy"] == 1
    assert s.skipped_by_reason["no usable modality"] == 1
    # Parts are what the file was built from; PostgreSQL mirrors it.
    parts = list((tmp_path / "parts").glob("part-*.parquet"))
    assert len(parts) == s.parts_written == -(-len(want) // 4)
    assert s.db_rows_upserted == len(want)
    assert_db_equals_parquet(pg_url, tmp_path, "first")
    assert s.distribution["n"] == len(want)
    assert s.distribution["probability"]["mean"] == pytest.approx(df["probability"].mean())
    med = s.distribution["probability"]["quantiles"]["0.5"]
    assert abs(med - df["probability"].median()) <= 2e-3
    assert s.peak_rss_mb > 0 and s.seconds > 0


def test_rerun_scores_nothing_and_leaves_the_file_unchanged(
    cohort: dict, predictor: Predictor, tmp_path: Path, pg_url: str
) -> None:
    first = score_cohort(cohort["prepared"], predictor, tmp_path, "rerun", "1", batch_size=8,
                         db_url=pg_url)
    target = tmp_path / "predictions.parquet"
    before = (target.read_bytes(), target.stat().st_mtime_ns,
              sorted(p.name for p in (tmp_path / "parts").iterdir()))
    again = score_cohort(cohort["prepared"], predictor, tmp_path, "rerun", "1", batch_size=8,
                         db_url=pg_url)
    assert again.scored_now == 0 and again.parts_written == 0 and again.db_parts_synced == 0
    assert again.already_scored == again.eligible == first.eligible
    after = (target.read_bytes(), target.stat().st_mtime_ns,
             sorted(p.name for p in (tmp_path / "parts").iterdir()))
    assert after == before
    assert again.distribution == first.distribution
    assert len(db_rows(pg_url, "rerun")) == first.eligible


def test_same_probabilities_as_predict_samples(
    cohort: dict, predictor: Predictor, tmp_path: Path
) -> None:
    score_cohort(cohort["prepared"], predictor, tmp_path, "direct", "1", batch_size=5)
    df = pd.read_parquet(tmp_path / "predictions.parquet").set_index("patient")
    pc = PreparedCohort(cohort["prepared"], predictor.cohort)
    rows = eligible_rows(cohort["prepared"])
    ds = pc.dataset(rows, MODS)
    direct = predictor.predict_samples([ds[i] for i in range(len(ds))])
    got = df.loc[rows["patient"], "probability"].to_numpy()
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-5)


def test_new_model_version_adds_rows_and_keeps_old_ones(
    cohort: dict, predictor: Predictor, tmp_path: Path, pg_url: str
) -> None:
    v1 = score_cohort(cohort["prepared"], predictor, tmp_path, "versions", "1", db_url=pg_url)
    old = pd.read_parquet(tmp_path / "predictions.parquet")
    v2 = score_cohort(cohort["prepared"], predictor, tmp_path, "versions", "2", db_url=pg_url)
    assert v2.scored_now == v2.eligible == v1.eligible and v2.already_scored == 0
    new = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(new) == 2 * len(old)
    kept = new[new["model_version"] == "1"].sort_values("patient").reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, old.sort_values("patient").reset_index(drop=True))
    v2_rows = new[new["model_version"] == "2"]
    assert set(v2_rows["patient"]) == set(old["patient"])
    assert not set(v2_rows["input_hash"]) & set(old["input_hash"])
    assert_db_equals_parquet(pg_url, tmp_path, "versions")
    assert len(db_rows(pg_url, "versions")) == 2 * v1.eligible


def test_changed_input_gets_a_new_row(
    cohort: dict, predictor: Predictor, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = score_cohort(cohort["prepared"], predictor, out, "changed", "1")
    # A copy of the prepared cohort where one patient's note is another (cached) note.
    moved = tmp_path / "prepared"
    moved.mkdir()
    for name in ("prepared.json", "quarantine.parquet"):
        shutil.copy(cohort["prepared"] / name, moved / name)
    (moved / "cache").symlink_to(cohort["prepared"] / "cache")
    f = pd.read_parquet(cohort["prepared"] / "cohort.parquet")
    has_note = f.index[(f["note_status"] == "ok") & ~f["excluded"]]
    a, b = has_note[0], has_note[1]
    f.loc[a, "note_key"] = f.loc[b, "note_key"]
    f.to_parquet(moved / "cohort.parquet", index=False)
    second = score_cohort(moved, predictor, out, "changed", "1")
    assert second.scored_now == 1 and second.already_scored == first.eligible - 1
    df = pd.read_parquet(out / "predictions.parquet")
    assert len(df) == first.eligible + 1
    assert (df["patient"] == f.loc[a, "patient"]).sum() == 2
    assert second.distribution["n"] == first.eligible  # current rows only


def test_resume_syncs_parts_missing_from_postgres(
    cohort: dict, predictor: Predictor, tmp_path: Path, pg_url: str
) -> None:
    import psycopg2

    first = score_cohort(cohort["prepared"], predictor, tmp_path, "sync", "1", batch_size=4,
                         db_url=pg_url)
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {TABLE} WHERE model_name = 'sync' AND patient IN "
                    f"(SELECT patient FROM {TABLE} WHERE model_name = 'sync' LIMIT 3)")
    conn.close()
    assert len(db_rows(pg_url, "sync")) == first.eligible - 3
    again = score_cohort(cohort["prepared"], predictor, tmp_path, "sync", "1", batch_size=4,
                         db_url=pg_url)
    assert again.scored_now == 0 and 1 <= again.db_parts_synced <= 3
    assert_db_equals_parquet(pg_url, tmp_path, "sync")


def test_consolidation_drops_duplicate_rows(
    cohort: dict, predictor: Predictor, tmp_path: Path
) -> None:
    s = score_cohort(cohort["prepared"], predictor, tmp_path, "dedup", "1", batch_size=4)
    parts = sorted((tmp_path / "parts").glob("part-*.parquet"))
    shutil.copy(parts[0], tmp_path / "parts" / "part-zzzz-copy.parquet")  # e.g. a stray copy
    assert consolidate(tmp_path) is True
    df = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(df) == s.eligible and df["patient"].is_unique
    assert consolidate(tmp_path) is False  # up to date: left alone


def test_no_phi_in_outputs_or_database(
    cohort: dict, predictor: Predictor, tmp_path: Path, pg_url: str
) -> None:
    import psycopg2

    s = score_cohort(cohort["prepared"], predictor, tmp_path, "phi", "1", db_url=pg_url)
    phi = cohort["phi"]
    canaries = {v for k in ("names", "dicom_names", "mrns", "birth_dates", "visit_dates",
                            "dicom_dates", "phones", "institutions") for v in phi[k]}
    canaries |= set(cohort["raw_ids"])
    canaries = {c for c in canaries if len(c) >= 4}
    texts = [json.dumps(s.to_dict(), default=str)]
    for path in tmp_path.rglob("*.parquet"):
        texts.append(path.read_bytes().decode("latin-1"))
        texts.append(pq.read_table(path).to_pandas().astype(str).to_csv())
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT t::text FROM {TABLE} t")
        texts += [r[0] for r in cur.fetchall()]
    conn.close()
    blob = "\n".join(texts)
    leaked = sorted(c for c in canaries if c in blob)
    assert not leaked, f"{len(leaked)} PHI canaries found in scoring output"


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
    shifted = score_reference(np.clip(df["probability"].to_numpy() + 0.3, 0, 1))
    far = score_cohort(cohort["prepared"], predictor, tmp_path, "drift", "1", reference=shifted)
    assert far.drift["psi"]["probability"] > 0.25


def test_psi_basics() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([50, 50, 0], [0, 50, 50]) > 1.0
    assert np.isnan(psi([0, 0], [1, 2]))


def test_bad_inputs_are_typed_errors(
    cohort: dict, predictor: Predictor, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="not a prepared cohort"):
        score_cohort(tmp_path, predictor, tmp_path / "o", "bad", "1")
    with pytest.raises(ConfigError, match="model_version"):
        score_cohort(cohort["prepared"], predictor, tmp_path / "o", "bad", "")
    cfg = predictor_config()
    cfg["cohort"]["modalities"]["ct"]["spec"]["size"] = [16, 16, 16]
    other = Predictor(cfg, device="cpu")
    with pytest.raises(ConfigError, match="preprocessing spec differs"):
        score_cohort(cohort["prepared"], other, tmp_path / "o", "bad", "1")
    url = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/no_such_db_{uuid.uuid4().hex}"
    with pytest.raises(ScoringError, match=TABLE) as err:
        score_cohort(cohort["prepared"], predictor, tmp_path / "o", "bad", "1", db_url=url)
    assert "no_such_db" not in str(err.value)  # the URL (may hold a password) is not echoed
    assert not (tmp_path / "o" / "parts").exists()


SCORER = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
import json
from fusion.predictor import Predictor
from fusion.scoring import score_cohort
cfg = json.loads(Path(sys.argv[1]).read_text())
p = Predictor(cfg, device="cpu")
p.model.load_state_dict(torch.load(sys.argv[2]))
# Slow each batch down so the parent reliably kills us mid-run.
score_cohort(Path(sys.argv[3]), p, Path(sys.argv[4]), "killed", "1", batch_size=2,
             db_url=sys.argv[5], progress=lambda d, t: time.sleep(1.0))
"""


@pytest.mark.slow
def test_sigkill_then_resume_scores_everyone_exactly_once(
    cohort: dict, predictor: Predictor, tmp_path: Path, pg_url: str
) -> None:
    cfg_path, weights, out = tmp_path / "cfg.json", tmp_path / "w.pt", tmp_path / "out"
    cfg_path.write_text(json.dumps(predictor.config))
    torch.save(predictor.model.state_dict(), weights)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCORER, str(cfg_path), str(weights), str(cohort["prepared"]),
         str(out), pg_url],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((out / "parts").glob("part-*.parquet")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "scorer wrote no part file"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "predictions.parquet").exists()  # killed before consolidation
    killed_rows = sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet"))
    s = score_cohort(cohort["prepared"], predictor, out, "killed", "1", batch_size=2,
                     db_url=pg_url)
    want = eligible_rows(cohort["prepared"])
    assert s.already_scored == killed_rows >= 1
    assert s.already_scored + s.scored_now == s.eligible == len(want)
    df = pd.read_parquet(out / "predictions.parquet")
    assert sorted(df["patient"]) == sorted(want["patient"])  # everyone, exactly once
    assert_db_equals_parquet(pg_url, out, "killed")
    db = db_rows(pg_url, "killed")
    assert len(db) == len(want)
    # The killed process's rows match what the same weights give in-process.
    pc = PreparedCohort(cohort["prepared"], predictor.cohort)
    ds = pc.dataset(want, MODS)
    direct = predictor.predict_samples([ds[i] for i in range(len(ds))])
    got = df.set_index("patient").loc[want["patient"], "probability"].to_numpy()
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-5)
