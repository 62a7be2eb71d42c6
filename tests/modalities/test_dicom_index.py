"""DICOM drop indexing: series choice, '#uid' selectors, notes join, skipped report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from modalities.dicom import read_dicom_series
from modalities.dicom_index import index_dicom, write_manifest
from modalities.errors import ConfigError
from modalities.paths import SeriesRef, resolve_under_root
from synth import SynthConfig, synth_cohort


def _clone(files: list[Path], dest: Path, tag: str, **attrs: object) -> tuple[str, list[Path]]:
    """Copy a series under ``dest`` as a new series (new UIDs), setting ``attrs``."""
    dest.mkdir(parents=True, exist_ok=True)
    uid = generate_uid(entropy_srcs=[tag])
    out = []
    for i, f in enumerate(sorted(files)):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=[tag, str(i)]
        )
        for k, v in attrs.items():
            setattr(ds, k, v)
        path = dest / f"{tag}_{i:03d}"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return uid, out


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A messy export: nested folders, mixed series, localizer, derived, older study, junk."""
    base = tmp_path_factory.mktemp("index")
    cfg = SynthConfig(mri_missing_rate=0.0, note_missing_rate=0.0, ct_shape=(16, 16, 8))
    syn = synth_cohort(base / "synth", patients=3, seed=4, config=cfg).manifest
    root = base / "drop"
    ids = list(syn["patient_id"])
    ct = [sorted((base / "synth" / c).iterdir()) for c in syn["ct"]]
    uid = [str(pydicom.dcmread(f[0], stop_before_pixels=True).SeriesInstanceUID) for f in ct]
    info: dict = {"root": root, "ids": ids, "uid": uid}

    # Patient 0: its CT alone in a deep folder, plus a localizer and a derived series
    # (more slices) in sibling folders, and a README.
    p0 = root / "export_a" / "x7" / "q2"
    p0.mkdir(parents=True)
    for f in ct[0]:
        shutil.copy(f, p0 / f.name)
    info["loc_uid"], _ = _clone(ct[0][:2], root / "export_a" / "loc", "loc",
                                ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesNumber=1)
    info["derived_uid"], _ = _clone(ct[0] + ct[0][:4], root / "export_a" / "mpr", "mpr",
                                    ImageType=["DERIVED", "SECONDARY", "MPR"], SeriesNumber=9)
    (root / "export_a" / "README.txt").write_text("exported by PACS\n")

    # Patient 1: CT slices scattered over two folders that also hold an MR series.
    mixed = root / "export_b"
    for i, f in enumerate(ct[1]):
        d = mixed / ("dirA" if i % 2 else "dirB")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, d / f.name)
    info["mr_uid"], _ = _clone(ct[1], mixed / "dirB", "mr", Modality="MR",
                               SOPClassUID="1.2.840.10008.5.1.4.1.1.4", SeriesNumber=4)

    # Patient 2: a newer study (the synthetic one) and an older study with more slices.
    shutil.copytree(base / "synth" / syn["ct"][2], root / "p2" / "new")
    info["old_uid"], _ = _clone(ct[2] + ct[2][:3], root / "p2" / "old", "old",
                                StudyInstanceUID=generate_uid(entropy_srcs=["oldstudy"]),
                                StudyDate="20010101")

    # pydicom's real files (single images: too few for a volume), a DICOMDIR, non-DICOM,
    # a DICOM file without PatientID, and a header that cannot be parsed.
    misc = root / "misc"
    misc.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "DICOMDIR", "no_meta.dcm"):
        shutil.copy(get_testdata_file(name), misc / name)
    _clone(ct[0][:1], misc / "anon", "anon", PatientID="")
    head = ct[0][0].read_bytes()
    meta_end = 144 + int.from_bytes(head[140:144], "little")
    # An undefined-length sequence that never ends: pydicom raises on the header.
    (misc / "broken.dcm").write_bytes(
        head[:meta_end] + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\x10\x00\x00\x00" + bytes(4)
    )
    (misc / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    return info


@pytest.fixture(scope="module")
def result(drop: dict):
    return index_dicom(drop["root"])


def _row(result, pid: str) -> pd.Series:
    m = result.manifest
    return m[m["patient_id"] == pid].iloc[0]


def test_chooses_original_series_in_its_own_folder(drop: dict, result) -> None:
    ids = drop["ids"]
    assert list(result.manifest.columns) == ["patient_id", "ct", "mri", "note"]
    assert set(result.manifest["patient_id"]) == set(ids)
    row = _row(result, ids[0])
    assert row["ct"] == "export_a/x7/q2"  # original beats derived with more slices
    assert row["mri"] == "" and row["note"] == ""


def test_mixed_folder_gets_uid_selectors(drop: dict, result) -> None:
    row = _row(result, drop["ids"][1])
    assert row["ct"] == f"export_b#{drop['uid'][1]}"  # deepest common folder of both dirs
    assert row["mri"] == f"export_b/dirB#{drop['mr_uid']}"
    ref = resolve_under_root(row["ct"], drop["root"], "row 1 ct", selectors=True)
    assert isinstance(ref, SeriesRef) and ref.series_uid == drop["uid"][1]
    # The series reader takes the selector and finds exactly the chosen series.
    vol = read_dicom_series(ref, modalities=["CT"])
    assert vol.array.shape == (16, 16, 8)


def test_most_recent_study_wins(drop: dict, result) -> None:
    assert _row(result, drop["ids"][2])["ct"] == "p2/new"


def test_skipped_report(drop: dict, result) -> None:
    sk = result.skipped
    assert list(sk.columns) == ["path", "patient_id", "series_uid", "reason"]
    by_uid = sk.groupby("series_uid")["reason"].first()
    assert "localizer" in by_uid[drop["loc_uid"]]
    assert "derived" in by_uid[drop["derived_uid"]]
    assert "older study" in by_uid[drop["old_uid"]]
    reasons = dict(zip(sk["path"], sk["reason"], strict=True))
    assert reasons["export_a/README.txt"] == "not DICOM"
    assert reasons["misc/no_meta.dcm"] == "not DICOM"
    assert reasons["misc/notes.pdf"] == "not DICOM"
    assert reasons["misc/DICOMDIR"].startswith("non-image SOP class")
    assert reasons["misc/broken.dcm"].startswith("unreadable")
    assert reasons["misc/anon/anon_000"] == "no PatientID"
    assert reasons["misc/CT_small.dcm"].startswith("too few images")
    assert reasons["misc/MR_small.dcm"].startswith("too few images")
    # Every file of the drop is either in a chosen series or reported.
    chosen = {f.relative_to(drop["root"]).as_posix() for f in drop["root"].rglob("*")
              if f.is_file()} - set(sk["path"])
    assert len(chosen) == 3 * 8 + 8  # three chosen CT series and the MR series
    assert sk["path"].is_unique


def test_notes_join_csv_and_jsonl(drop: dict, tmp_path: Path) -> None:
    ids = drop["ids"]
    notes = pd.DataFrame({
        "patient_id": [ids[0], ids[0], ids[1], "NOIMG1", "", ids[2]],
        "text": ["second visit", "first visit", "only note", "no images here", "orphan", " "],
        "date": ["2024-03-02", "2023-12-01", "", "2024-01-01", "", ""],
    })
    csv_path = tmp_path / "notes.csv"
    notes.to_csv(csv_path, index=False)
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in notes.to_dict("records")))
    for path in (csv_path, jsonl):
        res = index_dicom(drop["root"], path)
        assert _row(res, ids[0])["note"] == "first visit\n\nsecond visit"
        assert _row(res, ids[1])["note"] == "only note"
        assert _row(res, ids[2])["note"] == ""  # blank text is reported, not joined
        lonely = _row(res, "NOIMG1")
        assert (lonely["ct"], lonely["mri"], lonely["note"]) == ("", "", "no images here")
        reasons = set(res.skipped["reason"])
        assert {"note without patient_id", "empty note text"} <= reasons


def test_notes_file_errors(drop: dict, tmp_path: Path) -> None:
    bad = tmp_path / "notes.csv"
    bad.write_text("mrn,body\nX1,secret words\n")
    with pytest.raises(ConfigError, match="lacks column") as err:
        index_dicom(drop["root"], bad)
    assert "secret" not in str(err.value)
    (tmp_path / "notes.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(ConfigError, match=r"\.csv or \.jsonl"):
        index_dicom(drop["root"], tmp_path / "notes.xlsx")
    with pytest.raises(ConfigError, match="does not exist"):
        index_dicom(drop["root"], tmp_path / "nowhere.csv")


def test_write_manifest_round_trip(result, tmp_path: Path) -> None:
    man, skipped = write_manifest(result, tmp_path / "out" / "manifest.csv")
    assert skipped.name == "manifest.skipped.csv"
    back = pd.read_csv(man, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(back, result.manifest.astype(str), check_dtype=False)
    assert len(pd.read_csv(skipped)) == len(result.skipped)


def test_logs_hold_counts_only(drop: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        index_dicom(drop["root"])
    text = caplog.text
    assert "indexed" in text
    for pid in drop["ids"]:
        assert pid not in text
