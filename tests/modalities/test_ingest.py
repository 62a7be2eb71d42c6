"""Ingest domain logic: every input accepted or quarantined once, with the right code."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from modalities.cache import TensorCache
from modalities.cohort import CohortConfig, read_manifest
from modalities.errors import ConfigError
from modalities.ingest import (
    ingest_rows,
    plan_ingest,
    summarize,
    write_prepared,
)
from modalities.pseudonym import Pseudonymizer
from tests.modalities.label_rules import FLAGS

NOTE_ONLY = CohortConfig.model_validate(
    {"modalities": {"note": {}}, "labels": ["label"], "task": "binary"}
)


def _manifest(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "good.txt").write_text("Patient: John Smith MRN 1234567. Chest pain, troponin high.")
    (data / "empty.txt").write_text("  \n\t ")
    (data / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (tmp_path / "outside.txt").write_text("outside the root")
    path = data / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


ROWS = [
    {"patient_id": "MRN-A", "note": "good.txt", "label": "1", "split": ""},
    {"patient_id": "MRN-B", "note": "inline: no acute findings", "label": "0", "split": "test"},
    {"patient_id": "MRN-C", "note": "empty.txt", "label": "0", "split": ""},
    {"patient_id": "MRN-D", "note": "binary.txt", "label": "1", "split": ""},
    {"patient_id": "MRN-E", "note": "../outside.txt", "label": "1", "split": ""},
    {"patient_id": "MRN-F", "note": "nope.txt", "label": "1", "split": ""},
    {"patient_id": "MRN-G", "note": "good.txt", "label": "maybe", "split": ""},
    {"patient_id": "MRN-H", "note": "good.txt", "label": "1", "split": "holdout"},
    {"patient_id": "MRN-I", "note": "good.txt", "label": "0", "split": ""},
    {"patient_id": "MRN-I", "note": "good.txt", "label": "1", "split": ""},
    {"patient_id": "MRN-J", "note": "", "label": "", "split": ""},
    {"patient_id": "MRN-K", "note": "good.txt", "label": "", "split": ""},
]
EXPECTED = {
    "MRN-C": "EMPTY_NOTE",
    "MRN-D": "NOTE_NOT_TEXT",
    "MRN-E": "PATH_OUTSIDE_ROOT",
    "MRN-F": "MISSING_FILE",
    "MRN-G": "BAD_LABEL",
    "MRN-H": "BAD_SPLIT",
    "MRN-I": "DUPLICATE_PATIENT",
}


def _run(tmp_path: Path):
    manifest = _manifest(tmp_path, ROWS)
    plan = plan_ingest(manifest, NOTE_ONLY, chunk_size=5)
    out = tmp_path / "prepared"
    outcomes = [
        o
        for rows in plan.chunks
        for o in ingest_rows(manifest, rows, NOTE_ONLY, manifest.parent, out, plan.duplicate_rows,
                             labels=FLAGS)
    ]
    return manifest, out, outcomes


def test_codes_reconcile_and_cohort(tmp_path: Path) -> None:
    _, out, outcomes = _run(tmp_path)
    pseudo = Pseudonymizer.from_env()
    summary = write_prepared(out, outcomes, NOTE_ONLY, pseudo.key_id)
    non_empty = sum(1 for r in ROWS if r["note"])
    assert summary["inputs"] == non_empty == summary["accepted"] + summary["quarantined"]
    q = pd.read_parquet(out / "quarantine.parquet")
    got = {(p, c) for p, c in zip(q["patient"], q["code"], strict=True)}
    want = {(pseudo(pid), code) for pid, code in EXPECTED.items()}
    assert got == want
    assert (q["code"] == "DUPLICATE_PATIENT").sum() == 2  # both rows of the duplicate
    assert set(q["source"]) >= {"manifest row 2, column 'note'"}
    cohort = pd.read_parquet(out / "cohort.parquet")
    by = cohort.set_index("patient")
    assert by.loc[pseudo("MRN-A"), "note_status"] == "ok"
    assert by.loc[pseudo("MRN-B"), "split"] == "test"
    assert by.loc[pseudo("MRN-C"), "note_status"] == "quarantined"
    assert bool(by.loc[pseudo("MRN-C"), "excluded"])  # no usable modality left
    assert by.loc[pseudo("MRN-J"), "note_status"] == "missing"
    assert pd.isna(by.loc[pseudo("MRN-K"), "label"])  # unlabeled is allowed
    for pid in ("MRN-G", "MRN-H", "MRN-I"):
        assert pseudo(pid) not in by.index
    # Same content -> same cache key; the de-identified text is what is cached.
    assert by.loc[pseudo("MRN-A"), "note_key"] == by.loc[pseudo("MRN-K"), "note_key"]
    text = TensorCache(out / "cache").get("note", by.loc[pseudo("MRN-A"), "note_key"])
    assert "John" not in text and "1234567" not in text and "troponin" in text


def test_rerun_is_all_cache_hits_and_nothing_raw_leaks(tmp_path: Path) -> None:
    manifest, out, first = _run(tmp_path)
    assert summarize(first)["computed"] == 2  # good.txt once, the inline note once
    second = [
        o
        for rows in plan_ingest(manifest, NOTE_ONLY).chunks
        for o in ingest_rows(
            manifest,
            rows,
            NOTE_ONLY,
            manifest.parent,
            out,
            plan_ingest(manifest, NOTE_ONLY).duplicate_rows,
            labels=FLAGS,
        )
    ]
    assert summarize(second)["computed"] == 0
    assert summarize(second)["reasons"] == summarize(first)["reasons"]
    write_prepared(out, second, NOTE_ONLY, "k")
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for raw in ("MRN-A", "MRN-I", "John", "Smith", "1234567"):
        assert raw.encode() not in blob


def test_missing_manifest_column_is_config_error(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [{"patient_id": "x", "text": "a", "label": "1"}])
    with pytest.raises(ConfigError, match=r"lacks the required column\(s\) note;"):
        plan_ingest(manifest, NOTE_ONLY)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_formats(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame([{"patient_id": "1", "note": "a b", "label": 1}])
    path = tmp_path / f"m{suffix}"
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
        ".parquet": lambda: df.to_parquet(path),
    }[suffix]()
    got = read_manifest(path)
    assert got.loc[0, "patient_id"] == "1" and got.loc[0, "label"] == "1"
