"""Batch scoring loop: every eligible patient once, skips with reasons, resume, typed errors.

Each test scores into its own folder under its own model name (the input hash covers the
model name, so tests sharing the module's database never share keys).
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
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from fusion.data import PreparedCohort
from fusion.predictor import Predictor
from modalities.errors import ConfigError
from scoring import ScoringError, score_cohort
from scoring.plan import input_hash
from scoring.stores.postgres import TABLE
from tests.scoring.helpers import (
    MODS,
    PG,
    REPO,
    assert_db_equals_parquet,
    db_rows,
    eligible_rows,
    predictor_config,
)


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
    assert s.predictions_path == str(tmp_path / "predictions.parquet")
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
from scoring import score_cohort
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
