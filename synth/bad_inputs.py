"""Known-bad inputs with the reason code ingest must give each.

``BAD_INPUT_KINDS`` corrupts one modality of an otherwise good synthetic patient
(``synth_cohort(bad_inputs=k)`` plants the first k kinds, cycling); ``make_bad_corpus``
writes a small stand-alone manifest with one row per ``ReasonCode`` ingest can raise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modalities.errors import ReasonCode
from synth.cases import Case
from synth.config import TISSUE_HU, SynthConfig, write_csv
from synth.dicom_writer import ds_text
from synth.people import Person, fake_person, note_text
from synth.volumes import CtGeometry, mri_volume, series_uids, write_ct_series, write_nifti


def _ensure(case: Case, out: Path, modality: str, seed: int) -> None:
    """Make sure the modality a bad input corrupts exists (missing-rate may have dropped it)."""
    folder = out / case.name
    if case.row[modality]:
        return
    if modality == "ct":
        case.ct_files = write_ct_series(folder / "ct", case.ct_vol, case.ct_geo, case.person,
                                        series_uids(seed, case.name), case.rng)
        case.row["ct"] = f"{case.name}/ct"
    elif modality == "note":
        text = note_text(case.person, case.findings["note"], case.rng)
        (folder / "note.txt").write_text(text, encoding="utf-8")
        case.row["note"] = f"{case.name}/note.txt"
    case.truth[f"{modality}_present"] = True


def _bad_truncated_slice(case: Case, out: Path, seed: int) -> None:
    _ensure(case, out, "ct", seed)
    victim = sorted(case.ct_files)[len(case.ct_files) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - len(data) // 3])  # cut inside the pixel data
    case.expected["ct"] = ReasonCode.TRUNCATED_FILE


def _slice_file(case: Case, k: int) -> Path:
    """File holding slice index ``k`` (along +z) of the case's CT series."""
    from pydicom import dcmread

    z = case.ct_geo.origin[2] + k * case.ct_geo.slice_spacing
    for f in case.ct_files:
        if abs(float(dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) - z) < 1e-3:
            return f
    raise RuntimeError("slice not found")  # a bug in the writer, not user input


def _bad_missing_slice(case: Case, out: Path, seed: int) -> None:
    _ensure(case, out, "ct", seed)
    _slice_file(case, case.ct_geo.shape[2] // 2).unlink()
    case.expected["ct"] = ReasonCode.MISSING_SLICES


def _bad_mixed_series(case: Case, out: Path, seed: int) -> None:
    _ensure(case, out, "ct", seed)
    # A second reconstruction of the same study dropped into the same folder.
    write_ct_series(out / case.name / "ct", case.ct_vol, case.ct_geo, case.person,
                    series_uids(seed, case.name, "recon2"), case.rng, series_number=3)
    case.expected["ct"] = ReasonCode.MULTIPLE_SERIES


def _bad_not_dicom(case: Case, out: Path, seed: int) -> None:
    folder = out / case.name / "ct_export"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):  # look like slices by name, are an HTML error page by content
        (folder / f"IM{i:04d}.dcm").write_text(
            "<html><body>Export failed: session expired</body></html>\n", encoding="utf-8")
    case.row["ct"] = f"{case.name}/ct_export"
    case.expected["ct"] = ReasonCode.NOT_DICOM


# Bad notes go to a new file: the good note stays on disk, so phi.json stays true.
def _bad_empty_note(case: Case, out: Path, seed: int) -> None:
    (out / case.name / "note_export.txt").write_bytes(b"")
    case.row["note"] = f"{case.name}/note_export.txt"
    case.expected["note"] = ReasonCode.EMPTY_NOTE


def _bad_binary_note(case: Case, out: Path, seed: int) -> None:
    junk = b"%PDF-1.4\n\x00\x01\x02" + case.rng.integers(0, 256, 512, dtype=np.uint8).tobytes()
    (out / case.name / "note_export.txt").write_bytes(junk)
    case.row["note"] = f"{case.name}/note_export.txt"
    case.expected["note"] = ReasonCode.NOTE_NOT_TEXT


def _bad_duplicate_id(case: Case, out: Path, seed: int) -> None:
    case.expected["*"] = ReasonCode.DUPLICATE_PATIENT  # patient_id rewritten by the caller


def _bad_label(case: Case, out: Path, seed: int) -> None:
    case.row["label"] = "maybe"
    case.expected["*"] = ReasonCode.BAD_LABEL


def _bad_outside_root(case: Case, out: Path, seed: int) -> None:
    case.row["mri"] = "../outside.nii.gz"
    case.expected["mri"] = ReasonCode.PATH_OUTSIDE_ROOT


def _bad_missing_file(case: Case, out: Path, seed: int) -> None:
    (out / case.name / "mri.nii.gz").unlink(missing_ok=True)
    case.row["mri"] = f"{case.name}/mri_followup.nii.gz"
    case.expected["mri"] = ReasonCode.MISSING_FILE


def _bad_nan_nifti(case: Case, out: Path, seed: int) -> None:
    vol, _ = mri_volume(case.cfg, case.findings["mri"], case.rng)
    c = np.asarray(vol.shape) // 2
    vol[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = np.nan  # failed recon
    write_nifti(out / case.name / "mri.nii.gz", vol, case.cfg, case.rng)
    case.row["mri"] = f"{case.name}/mri.nii.gz"
    case.expected["mri"] = ReasonCode.NON_FINITE_VALUES


def _bad_mr_as_ct(case: Case, out: Path, seed: int) -> None:
    folder = out / case.name / "mr_series"
    mr = np.clip(case.ct_vol + 1000.0, 0, None) / 4.0  # MR-like unsigned intensities
    write_ct_series(folder, mr, case.ct_geo, case.person, series_uids(seed, case.name, "mr"),
                    case.rng, modality="MR", series_number=5,
                    image_type=("ORIGINAL", "PRIMARY", "M", "ND"))
    case.row["ct"] = f"{case.name}/mr_series"
    case.expected["ct"] = ReasonCode.WRONG_MODALITY


# Planted in this order, cycling: bad_inputs=k plants the first k (mod 12).
BAD_INPUT_KINDS: dict[str, Callable[[Case, Path, int], None]] = {
    "truncated_slice": _bad_truncated_slice,
    "missing_slice": _bad_missing_slice,
    "mixed_series": _bad_mixed_series,
    "not_dicom": _bad_not_dicom,
    "empty_note": _bad_empty_note,
    "binary_note": _bad_binary_note,
    "duplicate_id": _bad_duplicate_id,
    "bad_label": _bad_label,
    "outside_root": _bad_outside_root,
    "missing_file": _bad_missing_file,
    "nan_nifti": _bad_nan_nifti,
    "mr_as_ct": _bad_mr_as_ct,
}


# --------------------------------------------------------------------------- bad corpus


def make_bad_corpus(out: Path, seed: int = 0) -> pd.DataFrame:
    """Write a manifest where each row exercises one ``ReasonCode``; return it with expectations.

    Columns: the manifest's (``patient_id, ct, mri, note, label, split``) plus
    ``expected_modality`` and ``expected_code``. ``OUT/manifest.csv`` holds the manifest
    columns only, ``OUT/expected.csv`` everything. A good control row expects nothing.
    Row-level codes (DUPLICATE_PATIENT, BAD_LABEL, BAD_SPLIT) name modality ``*``: every
    given input of those rows is rejected, both duplicate rows included.
    """
    from pydicom import dcmread
    from pydicom.encaps import encapsulate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = SynthConfig()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    used: set[str] = set()
    people: list[Person] = []
    rows: list[dict[str, str]] = []

    def row(code: str, modality: str, **cells: str) -> dict[str, str]:
        people.append(fake_person(rng, used))
        r = {"patient_id": people[-1].mrn, "ct": "", "mri": "", "note": "", "label": "1",
             "split": "train", "expected_modality": modality, "expected_code": code, **cells}
        rows.append(r)
        return r

    def series(name: str, nz: int = 12, modality: str = "CT") -> tuple[CtGeometry, Path]:
        geo = CtGeometry((-12.0, -12.0, 0.0), 1.5, 2.5, (16, 16, nz), False)
        vol = np.full((16, 16, nz), TISSUE_HU, dtype=np.float32)
        folder = out / name
        write_ct_series(folder, vol, geo, people[-1], series_uids(seed, name), rng,
                        modality=modality)
        return geo, folder

    def by_z(folder: Path) -> list[Path]:
        files = sorted(folder.iterdir())
        return sorted(files, key=lambda f: float(
            dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))

    def rewrite(path: Path, **attrs: Any) -> None:
        ds = dcmread(path)
        for k, v in attrs.items():
            setattr(ds, k, v)
        ds.save_as(path, enforce_file_format=True)

    # Control: every modality fine.
    row("", "", ct="good/ct", mri="good/mri.nii.gz", note="good/note.txt")
    series("good/ct")
    vol, _ = mri_volume(cfg, False, rng)
    write_nifti(out / "good/mri.nii.gz", vol, cfg, rng)
    (out / "good/note.txt").write_text(note_text(people[-1], False, rng), encoding="utf-8")

    row("NOT_DICOM", "ct", ct="not_dicom")
    (out / "not_dicom").mkdir(exist_ok=True)
    (out / "not_dicom/IM0001.dcm").write_text("not a DICOM file\n", encoding="utf-8")

    row("UNREADABLE", "mri", mri="unreadable/mri.nii.gz")
    (out / "unreadable").mkdir(exist_ok=True)
    (out / "unreadable/mri.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage, not a gzip stream")

    row("TRUNCATED_FILE", "ct", ct="truncated")
    _, folder = series("truncated")
    victim = by_z(folder)[4]
    victim.write_bytes(victim.read_bytes()[:-200])

    row("CODEC_UNAVAILABLE", "ct", ct="codec")
    _, folder = series("codec")
    # HTJ2K: only pylibjpeg-openjpeg decodes it; without that plugin no decoder exists.
    for f in folder.iterdir():
        ds = dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)

    row("MISSING_SLICES", "ct", ct="missing_slices")
    _, folder = series("missing_slices")
    by_z(folder)[4].unlink()

    row("INCONSISTENT_SPACING", "ct", ct="spacing")
    _, folder = series("spacing")
    files = by_z(folder)
    for i, f in enumerate(files[5:], start=5):  # gap of 3.4 mm (1.36 intervals) after slice 4
        rewrite(f, ImagePositionPatient=["-12", "-12", ds_text(round(i * 2.5 + 0.9, 4))])

    row("INCONSISTENT_ORIENTATION", "ct", ct="orientation")
    _, folder = series("orientation")
    rewrite(by_z(folder)[3], ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])

    row("INCONSISTENT_SHAPE", "ct", ct="shape")
    _, folder = series("shape")
    f = by_z(folder)[3]
    rewrite(f, Rows=8, PixelData=np.zeros((8, 16), "<i2").tobytes())

    row("MULTIPLE_SERIES", "ct", ct="mixed")
    series("mixed")
    geo = CtGeometry((-12.0, -12.0, 0.0), 1.5, 2.5, (16, 16, 12), False)
    write_ct_series(out / "mixed", np.zeros((16, 16, 12), np.float32), geo, people[-1],
                    series_uids(seed, "mixed", "second"), rng, series_number=9)

    row("TOO_FEW_SLICES", "ct", ct="few")  # needs the CT spec's min_slices >= 3 (tiny: 8)
    series("few", nz=2)

    row("NON_FINITE_VALUES", "mri", mri="nan/mri.nii.gz")
    (out / "nan").mkdir(exist_ok=True)
    vol, _ = mri_volume(cfg, False, rng)
    vol[4:8, 4:8, 4:8] = np.nan
    write_nifti(out / "nan/mri.nii.gz", vol, cfg, rng)

    row("WRONG_MODALITY", "ct", ct="mr_series")
    series("mr_series", modality="MR")

    row("MISSING_FILE", "mri", mri="nowhere/mri.nii.gz")
    row("PATH_OUTSIDE_ROOT", "mri", mri="../outside.nii.gz")

    row("EMPTY_NOTE", "note", note="notes/empty.txt")
    (out / "notes").mkdir(exist_ok=True)
    (out / "notes/empty.txt").write_bytes(b"  \n\n")

    row("NOTE_NOT_TEXT", "note", note="notes/binary.txt")
    (out / "notes/binary.txt").write_bytes(b"\x00\x01\x02\x03PK\x03\x04" + bytes(range(256)))

    # DUPLICATE_PATIENT: two rows with one patient ID, each with a valid note.
    for i in range(2):
        row("DUPLICATE_PATIENT", "*", note=f"notes/dup_{i}.txt")
        (out / f"notes/dup_{i}.txt").write_text(note_text(people[-1], False, rng),
                                                encoding="utf-8")
    rows[-1]["patient_id"] = rows[-2]["patient_id"]

    row("BAD_LABEL", "*", note="notes/label.txt", label="maybe")
    (out / "notes/label.txt").write_text(note_text(people[-1], True, rng), encoding="utf-8")
    row("BAD_SPLIT", "*", note="notes/split.txt", split="holdout")
    (out / "notes/split.txt").write_text(note_text(people[-1], True, rng), encoding="utf-8")

    row("UNSUPPORTED_FORMAT", "ct", ct="good/note.txt#1.2.3.4")  # '#series' on a file

    if hasattr(os, "mkfifo"):  # a FIFO would block a reader for ever: never opened
        row("NOT_REGULAR_FILE", "note", note="notes/fifo.txt")
        if not (out / "notes/fifo.txt").exists():
            os.mkfifo(out / "notes/fifo.txt")
    row("NOTE_TOO_LARGE", "note", note="notes/huge.txt")
    (out / "notes/huge.txt").write_bytes(b"a " * 500_000 + b"b")  # NoteSpec.max_bytes + 1
    row("UNSUPPORTED_NOTE_FORMAT", "note", note="notes/visit.rtf")
    (out / "notes/visit.rtf").write_text(r"{\rtf1 " + note_text(people[-1], False, rng) + "}",
                                         encoding="utf-8")

    # geometry (issue 10)
    row("PIXEL_DECODE_FAILED", "ct", ct="bad_rle")
    _, folder = series("bad_rle")
    for f in folder.iterdir():  # an RLE header announcing 15 segments, then nothing
        ds = dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.5"
        ds.PixelData = encapsulate([(15).to_bytes(4, "little") + bytes(60)])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)

    row("INVALID_SPACING", "ct", ct="zero_spacing")
    _, folder = series("zero_spacing")
    for f in folder.iterdir():
        rewrite(f, PixelSpacing=["0", "0"])

    row("INVALID_ORIENTATION", "ct", ct="bad_iop")
    _, folder = series("bad_iop")
    for f in folder.iterdir():
        rewrite(f, ImageOrientationPatient=["2", "0", "0", "0", "2", "0"])

    row("GANTRY_TILT", "ct", ct="tilt")
    _, folder = series("tilt")
    c20, s20 = ds_text(round(np.cos(np.radians(20)), 4)), ds_text(round(np.sin(np.radians(20)), 4))
    for f in folder.iterdir():  # slices tilted 20 degrees, positions still step along z
        rewrite(f, ImageOrientationPatient=["1", "0", "0", "0", c20, f"-{s20}"])

    row("SLICE_GAP_TOO_LARGE", "ct", ct="far_gap")
    _, folder = series("far_gap")
    for i, f in enumerate(by_z(folder)[6:], start=6):  # two blocks of 6 slices, 100 mm apart
        rewrite(f, ImagePositionPatient=["-12", "-12", ds_text(round(i * 2.5 + 100.0, 4))])

    row("VOLUME_TOO_LARGE", "ct", ct="huge")
    _, folder = series("huge")
    for f in folder.iterdir():  # a small compressed stream whose header claims 65535^2
        ds = dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.5"
        ds.PixelData = encapsulate([bytes(64)])
        ds["PixelData"].VR = "OB"
        ds.Rows = ds.Columns = 65535
        ds.save_as(f, enforce_file_format=True)

    df = pd.DataFrame(rows)
    write_csv(df[["patient_id", "ct", "mri", "note", "label", "split"]], out / "manifest.csv")
    write_csv(df, out / "expected.csv")
    return df

