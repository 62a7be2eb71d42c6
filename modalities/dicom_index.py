"""Index an unsorted DICOM drop into a manifest: one CT and one MR series per patient.

Why: PACS exports arrive as nested folders of oddly named files that mix patients,
studies, series, localizers, derived reconstructions and non-DICOM debris. Ingest wants one
row per patient naming one series per modality. ``index_dicom`` reads headers only, groups
files by PatientID / StudyInstanceUID / SeriesInstanceUID, picks a series per modality by
the rules below, joins clinical notes by patient, and reports every file it did not use.

Selection rules, per patient and modality column (``ct``: Modality CT, ``mri``: MR):
1. Drop localizers/scouts: ImageType contains LOCALIZER (or SCOUT), or fewer than
   ``MIN_SLICES`` images.
2. Of the studies that still hold a candidate, keep the most recent (StudyDate, then
   StudyTime; a missing date counts as oldest).
3. In that study prefer ORIGINAL/PRIMARY over DERIVED/SECONDARY images, then the most
   slices, then the highest SeriesNumber; the SeriesInstanceUID breaks exact ties so the
   result does not depend on walk order.

The manifest value of a series is the deepest folder holding all its files, relative to
the root, with ``#<SeriesInstanceUID>`` appended when that folder (recursively) also holds
files of another series (see ``modalities.paths.SeriesRef``). Logs carry counts only:
header values (names, IDs, dates) never reach a log line or an error message.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from modalities.errors import ConfigError

log = logging.getLogger("clinfuse.index")

MANIFEST_COLUMNS = ["patient_id", "ct", "mri", "note"]
SKIPPED_COLUMNS = ["path", "patient_id", "series_uid", "reason"]
# DICOM Modality -> manifest column. A new volume modality is one line here.
MODALITY_COLUMNS = {"CT": "ct", "MR": "mri"}
MIN_SLICES = 3  # fewer images than this is a localizer/scout, not a volume
NOTE_SEPARATOR = "\n\n"
_TAGS = [
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "Modality",
    "ImageType",
    "SeriesNumber",
    "StudyDate",
    "StudyTime",
    "NumberOfFrames",
    "Rows",
]
_LOCALIZER_TYPES = {"LOCALIZER", "SCOUT"}


@dataclass
class IndexResult:
    """The manifest (one row per patient) and every file left out, with why."""

    manifest: pd.DataFrame
    skipped: pd.DataFrame


@dataclass
class _Series:
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    series_number: int
    study_when: str  # StudyDate + StudyTime, sortable text; "" when absent
    files: list[Path] = field(default_factory=list)
    images: int = 0  # frames over all files

    @property
    def localizer(self) -> bool:
        return bool(_LOCALIZER_TYPES & set(self.image_type))

    @property
    def original(self) -> bool:
        """Not flagged DERIVED/SECONDARY (a missing ImageType counts as original)."""
        t = self.image_type
        return not ((len(t) > 0 and t[0] == "DERIVED") or (len(t) > 1 and t[1] == "SECONDARY"))

    def rank(self) -> tuple[bool, int, int, str]:
        return (self.original, self.images, self.series_number, self.series_uid)


@dataclass
class _Scan:
    """What walking the drop found."""

    series: dict[tuple[str, str, str], _Series] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Every folder (relative) -> series UIDs with a file somewhere below it.
    uids_below: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    files: int = 0


def _text(ds: object, name: str) -> str:
    value = getattr(ds, name, "")
    return "" if value is None else str(value).strip()


def _int(value: object, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _is_image_sop(sop_class: str) -> bool:
    """Image storage SOP classes carry pixels; SR, presentation states, RT plans do not."""
    from pydicom.uid import UID

    return "Image Storage" in UID(sop_class).name if sop_class else False


def _scan(root: Path) -> _Scan:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from modalities.dicom import quiet_dicom_logs

    quiet_dicom_logs()
    scan = _Scan()
    real_root = root.resolve()

    def skip(rel: str, reason: str, pid: str = "", uid: str = "") -> None:
        scan.skipped.append({"path": rel, "patient_id": pid, "series_uid": uid, "reason": reason})

    with warnings.catch_warnings():
        # pydicom warnings quote header values: keep them out of logs.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        for dirpath, dirs, names in os.walk(root):
            dirs.sort()  # deterministic walk order
            for name in sorted(names):
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                scan.files += 1
                if name.startswith("."):
                    skip(rel, "hidden file")
                    continue
                # dcmread on a FIFO blocks for ever and on /dev/zero never ends; a file
                # linked out of the drop would be indexed but refused by ingest.
                if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                    skip(rel, "link that resolves outside the root")
                    continue
                try:
                    regular = stat.S_ISREG(path.stat().st_mode)
                except OSError:
                    regular = False
                if not regular:
                    skip(rel, "not a regular file (FIFO, device, socket or broken link)")
                    continue
                try:
                    ds = dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
                except InvalidDicomError:
                    skip(rel, "not DICOM")
                    continue
                except Exception as exc:  # corrupt headers raise many types
                    skip(rel, f"unreadable DICOM header ({type(exc).__name__})")
                    continue
                pid = _text(ds, "PatientID")
                uid = _text(ds, "SeriesInstanceUID")
                sop = _text(ds, "SOPClassUID") or _text(ds.file_meta, "MediaStorageSOPClassUID")
                modality = _text(ds, "Modality").upper()
                if not _is_image_sop(sop):
                    skip(rel, "non-image SOP class (no pixel data)", pid, uid)
                elif "Rows" not in ds:
                    skip(rel, "incomplete image header (no Rows; truncated file?)", pid, uid)
                elif not pid:
                    skip(rel, "no PatientID", "", uid)
                elif not uid:
                    skip(rel, "no SeriesInstanceUID", pid)
                elif modality not in MODALITY_COLUMNS:
                    # Modality is a coded value (US, PT, ...), not PHI.
                    skip(rel, f"modality {modality or '<none>'} is not indexed", pid, uid)
                else:
                    key = (pid, _text(ds, "StudyInstanceUID"), uid)
                    s = scan.series.get(key)
                    if s is None:
                        image_type = tuple(
                            str(v).strip().upper() for v in (getattr(ds, "ImageType", None) or ())
                        )
                        s = scan.series[key] = _Series(
                            pid,
                            key[1],
                            uid,
                            modality,
                            image_type,
                            _int(getattr(ds, "SeriesNumber", None), -1),
                            _text(ds, "StudyDate") + _text(ds, "StudyTime"),
                        )
                    s.files.append(path)
                    s.images += max(1, _int(getattr(ds, "NumberOfFrames", None), 1))
                    for parent in Path(rel).parents:
                        scan.uids_below[parent.as_posix()].add(uid)
    return scan


def _choose(cands: list[_Series]) -> tuple[_Series | None, dict[str, str]]:
    """Pick one series (rules in the module docstring); returns it and why others lost."""
    why: dict[str, str] = {}
    usable = []
    for s in cands:
        if s.localizer:
            why[s.series_uid] = "localizer/scout series (ImageType LOCALIZER)"
        elif s.images < MIN_SLICES:
            why[s.series_uid] = f"too few images for a volume ({s.images} < {MIN_SLICES})"
        else:
            usable.append(s)
    if not usable:
        return None, why
    latest = max(usable, key=lambda s: (s.study_when, s.study_uid))
    in_study = [s for s in usable if s.study_uid == latest.study_uid]
    best = max(in_study, key=_Series.rank)
    for s in usable:
        if s is best:
            continue
        if s.study_uid != best.study_uid:
            why[s.series_uid] = "older study (the most recent StudyDate is used)"
        elif s.original != best.original:
            why[s.series_uid] = "derived/secondary images (ORIGINAL/PRIMARY preferred)"
        elif s.images != best.images:
            why[s.series_uid] = "fewer images than the chosen series"
        elif s.series_number != best.series_number:
            why[s.series_uid] = "lower SeriesNumber than the chosen series"
        else:
            why[s.series_uid] = "same rank as the chosen series (tie broken by UID)"
    return best, why


def _series_value(s: _Series, root: Path, uids_below: dict[str, set[str]]) -> str:
    """Deepest common folder of the series, plus ``#uid`` when other series share it."""
    folder = Path(os.path.commonpath([f.parent for f in s.files])).relative_to(root)
    rel = folder.as_posix()
    return f"{rel}#{s.series_uid}" if uids_below[rel] - {s.series_uid} else rel


def _read_notes(path: Path) -> pd.DataFrame:
    """Notes export (CSV or JSONL, or a folder of them) -> DataFrame(patient_id, text, date)."""
    path = Path(path)
    if path.is_dir():  # a drop folder of nightly exports: every .csv/.jsonl in name order
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix.lower() in (".csv", ".jsonl", ".ndjson") and p.is_file()
        )
        frames = [_read_notes(f) for f in files]
        if not frames:
            return pd.DataFrame(columns=["patient_id", "text", "date"])
        return pd.concat(frames, ignore_index=True)
    if not path.is_file():  # is_file() is False for a FIFO: never opened, it would block
        raise ConfigError(f"notes file {path} does not exist or is not a regular file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix in (".jsonl", ".ndjson"):
            lines = path.read_text(encoding="utf-8").splitlines()
            df = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
        else:
            raise ConfigError(f"notes file {path}: use .csv or .jsonl (one JSON object a line)")
    except (ValueError, OSError, pd.errors.ParserError) as err:
        # The parser's message can quote note text: name only the error type.
        raise ConfigError(
            f"notes file {path} could not be parsed ({type(err).__name__}); "
            "export it as UTF-8 CSV or JSONL"
        ) from None
    missing = [c for c in ("patient_id", "text") if c not in df.columns]
    if missing:
        raise ConfigError(
            f"notes file {path} lacks column(s) {missing}; it needs patient_id "
            "and text (and optionally date)"
        )
    if "date" not in df.columns:
        df["date"] = ""
    df = df[["patient_id", "text", "date"]].astype(object).where(df.notna(), "")
    return df.map(lambda v: "" if v is None else str(v)).reset_index(drop=True)


def _join_notes(notes: pd.DataFrame, source: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Concatenate each patient's notes in date order (undated last, file order kept)."""
    skipped = []
    notes = notes.assign(patient_id=notes["patient_id"].str.strip(), _order=range(len(notes)))
    for i in notes.index[notes["patient_id"] == ""]:
        skipped.append(
            {
                "path": f"{source} row {i + 1}",
                "patient_id": "",
                "series_uid": "",
                "reason": "note without patient_id",
            }
        )
    blank = (notes["patient_id"] != "") & (notes["text"].str.strip() == "")
    for i in notes.index[blank]:
        skipped.append(
            {
                "path": f"{source} row {i + 1}",
                "patient_id": notes.at[i, "patient_id"],
                "series_uid": "",
                "reason": "empty note text",
            }
        )
    notes = notes[(notes["patient_id"] != "") & ~blank]
    when = pd.to_datetime(
        notes["date"].str.strip().replace("", None), errors="coerce", format="mixed"
    )
    notes = notes.assign(_when=when).sort_values(
        ["patient_id", "_when", "_order"], na_position="last", kind="stable"
    )
    joined = {
        pid: NOTE_SEPARATOR.join(t.strip() for t in g["text"])
        for pid, g in notes.groupby("patient_id", sort=True)
    }
    return joined, skipped


def index_dicom(root: Path, notes: Path | None = None) -> IndexResult:
    """Walk ``root`` (headers only) and build a manifest; see the module docstring.

    ``notes``: optional CSV/JSONL with ``patient_id`` and ``text`` (optional ``date``).
    Patients with notes but no usable images still get a row. Manifest paths are relative
    to ``root``: ingest it with ``--data-root`` set to the same folder.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError(f"DICOM root {root} is not a folder")
    # Read the notes first: a bad notes file should fail before a long walk.
    note_table = None if notes is None else _read_notes(notes)
    scan = _scan(root)
    skipped = scan.skipped
    rows: dict[str, dict[str, str]] = defaultdict(lambda: dict.fromkeys(MANIFEST_COLUMNS, ""))

    groups: dict[tuple[str, str], list[_Series]] = defaultdict(list)
    for s in scan.series.values():
        groups[(s.patient_id, MODALITY_COLUMNS[s.modality])].append(s)
    for (pid, column), cands in sorted(groups.items()):
        best, why = _choose(cands)
        if best is not None:
            rows[pid][column] = _series_value(best, root, scan.uids_below)
        for s in cands:
            if s.series_uid in why:
                skipped += [
                    {
                        "path": f.relative_to(root).as_posix(),
                        "patient_id": pid,
                        "series_uid": s.series_uid,
                        "reason": why[s.series_uid],
                    }
                    for f in sorted(s.files)
                ]

    if note_table is not None:
        joined, note_skips = _join_notes(note_table, Path(notes).name)
        skipped += note_skips
        for pid, text in joined.items():
            rows[pid]["note"] = text

    manifest = pd.DataFrame(
        [{**row, "patient_id": pid} for pid, row in sorted(rows.items())],
        columns=MANIFEST_COLUMNS,
    )
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    log.info(
        "indexed %d files under the root: %d series, %d patients, %d files skipped",
        scan.files,
        len(scan.series),
        len(manifest),
        len(skipped_df),
    )
    return IndexResult(manifest=manifest, skipped=skipped_df)


def write_manifest(result: IndexResult, out_csv: Path) -> tuple[Path, Path]:
    """Write the manifest CSV and, beside it, ``<name>.skipped.csv``; return both paths."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    skipped_csv = out_csv.with_name(out_csv.stem + ".skipped.csv")
    result.manifest.to_csv(out_csv, index=False, lineterminator="\n")
    result.skipped.to_csv(skipped_csv, index=False, lineterminator="\n")
    return out_csv, skipped_csv
