"""The ingest flow end to end through the real CLI and Prefect (ephemeral server).

A synthetic cohort with planted bad inputs is ingested twice (second run: cache hits),
incrementally (only new patients computed), and on a Dask LocalCluster (same result). A
PHI canary then greps every prepared file, the CLI's output and Prefect's database for the
fake names, MRNs, dates and phone numbers synth wrote.
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

from modalities.pseudonym import Pseudonymizer
from synth import synth_cohort

pytestmark = pytest.mark.slow


def clinfuse(*args: str, prefect_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "-m", "workflows.cli", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth_cohort(out, patients=50, seed=3, bad_inputs=12)
    return out


@pytest.fixture(scope="module")
def ingested(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("ingest")
    prepared, home = work / "prepared", work / "prefect"
    runs = [
        clinfuse("ingest", str(cohort / "manifest.csv"), "--out", str(prepared),
                 "--config", "tiny", "--json", prefect_home=home)
        for _ in range(2)
    ]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    return {"prepared": prepared, "home": home, "runs": runs,
            "summaries": [json.loads(r.stdout) for r in runs]}


def test_counts_reconcile_and_reasons_match_plants(cohort: Path, ingested: dict) -> None:
    first = ingested["summaries"][0]
    assert first["inputs"] == first["accepted"] + first["quarantined"]
    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    given = sum((manifest[c] != "").sum() for c in ("ct", "mri", "note"))
    assert first["inputs"] == given
    q = pd.read_parquet(ingested["prepared"] / "quarantine.parquet")
    assert len(q) == first["quarantined"] and sum(first["reasons"].values()) == len(q)
    expected = pd.read_csv(cohort / "expected_quarantine.csv", dtype=str)
    pseudo = Pseudonymizer.from_env()
    got = set(zip(q["patient"], q["modality"], q["code"], strict=True))
    for _, e in expected.iterrows():
        p = pseudo(e["patient_id"])
        if e["modality"] == "*":
            assert any(g[0] == p and g[2] == e["expected_code"] for g in got), e.to_dict()
        else:
            assert (p, e["modality"], e["expected_code"]) in got, e.to_dict()
    # Nothing quarantined that was not planted: good synthetic inputs are all accepted.
    planted = {pseudo(pid) for pid in expected["patient_id"]}
    assert set(q["patient"]) <= planted
    cohort_df = pd.read_parquet(ingested["prepared"] / "cohort.parquet")
    assert cohort_df["patient"].is_unique
    assert (cohort_df["ct_status"] == "ok").sum() >= 50


def test_second_run_is_cache_hits(ingested: dict) -> None:
    first, second = ingested["summaries"]
    assert first["computed"] > 0
    assert second["computed"] == 0
    assert second["cached"] == first["accepted"] == second["accepted"]
    assert second["reasons"] == first["reasons"]


def test_adding_patients_processes_only_new_ones(cohort: Path, tmp_path: Path) -> None:
    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    head = cohort / "manifest_head.csv"
    manifest.iloc[:20].to_csv(head, index=False)
    prepared, home = tmp_path / "prepared", tmp_path / "prefect"
    a = clinfuse("ingest", str(head), "--out", str(prepared), "--config", "tiny", "--json",
                 prefect_home=home)
    b = clinfuse("ingest", str(cohort / "manifest.csv"), "--out", str(prepared), "--config",
                 "tiny", "--json", prefect_home=home)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr + b.stderr)[-3000:]
    sa, sb = json.loads(a.stdout), json.loads(b.stdout)
    assert sa["computed"] == sa["accepted"]
    # Only the accepted inputs of the new rows (20 onwards) are computed; the first 20 rows'
    # inputs are cache hits (or, for a planted duplicate of an early patient, quarantined).
    q = pd.read_parquet(prepared / "quarantine.parquet")
    q_rows = q["source"].str.extract(r"row (\d+)")[0].astype(int)
    later_inputs = sum((manifest.iloc[20:][c] != "").sum() for c in ("ct", "mri", "note"))
    assert sb["computed"] == later_inputs - int((q_rows >= 20).sum())
    assert sb["cached"] == sb["accepted"] - sb["computed"] > 0


def test_dask_local_cluster_gives_same_cohort(cohort: Path, ingested: dict, tmp_path: Path):
    out = tmp_path / "prepared"
    r = clinfuse("ingest", str(cohort / "manifest.csv"), "--out", str(out), "--config", "tiny",
                 "--dask", "local", "--json", prefect_home=tmp_path / "prefect")
    assert r.returncode == 0, r.stderr[-3000:]
    ref = pd.read_parquet(ingested["prepared"] / "cohort.parquet").sort_values("patient")
    got = pd.read_parquet(out / "cohort.parquet").sort_values("patient")
    pd.testing.assert_frame_equal(ref.reset_index(drop=True), got.reset_index(drop=True))


def test_phi_canary(cohort: Path, ingested: dict) -> None:
    phi = json.loads((cohort / "phi.json").read_text())
    needles = {
        v for k in ("names", "dicom_names", "mrns", "birth_dates", "visit_dates", "phones")
        for v in phi[k] if len(v) >= 5
    }
    # Name parts too: "Smith" alone must not survive de-identification.
    needles |= {part for n in phi["names"] for part in n.split() if len(part) >= 5}
    assert needles, "synth wrote no PHI; the canary would be meaningless"
    haystacks: dict[str, bytes] = {
        str(p): p.read_bytes() for p in ingested["prepared"].rglob("*") if p.is_file()
    }
    haystacks |= {
        str(p): p.read_bytes() for p in ingested["home"].rglob("*") if p.is_file()
    }
    for i, r in enumerate(ingested["runs"]):
        haystacks[f"run{i}.out"] = (r.stdout + r.stderr).encode()
    assert any("prefect.db" in k for k in haystacks), "Prefect's database was not found"
    # An all-digit needle (a DICOM date, 19361202) must stand alone: Prefect's database holds
    # many long floats, and "0.1936120245" is no birth date.
    def found(needle: str, blob: bytes) -> bool:
        if not needle.isdigit():
            return needle.encode() in blob
        return re.search(rb"(?<![0-9])" + needle.encode() + rb"(?![0-9])", blob) is not None

    leaks = [(n, k) for k, blob in haystacks.items() for n in needles if found(n, blob)]
    assert not leaks, leaks[:5]
