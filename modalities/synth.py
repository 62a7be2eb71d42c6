"""Synthetic cohorts: CT DICOM series, MRI NIfTI volumes and clinical notes with fake PHI.

Why: the whole workflow (index, ingest, de-identification, training, fusion) needs data
that behaves like a hospital export without being one. Each patient has three latent
binary findings, one per modality (a bright CT lesion, a bright MRI region, cardiac
wording in the note). ``label_rule`` says how they make the label: ``majority`` (the vote
of the three, a little noise: every single modality is informative and fusion is better)
or ``xor`` (the first two of ``modalities`` disagree: each alone is at chance, only a model
that combines them can learn it; the interaction cohort fusion tests use).
Headers and notes carry fake PHI (names, MRNs, dates, phone numbers) recorded in
``phi.json`` for leak ("canary") tests, and ``bad_inputs`` plants known-bad inputs whose
expected reason codes are recorded.

Output is byte-for-byte deterministic for a (seed, config): dates and UIDs derive from
the seed, never from the clock. See docs/data.md for the layout.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modalities.errors import ReasonCode

log = logging.getLogger("clinfuse.synth")

ALL_MODALITIES = ("ct", "mri", "note")
MANIFEST_COLUMNS = ["patient_id", *ALL_MODALITIES, "label"]
EXPECTED_COLUMNS = ["row", "patient_id", "modality", "expected_code", "kind"]
CT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # axial, rows along +x (L), columns along +y (P)
HU_INTERCEPT = -1024.0
TISSUE_HU = 40.0


class SynthConfig(BaseModel):
    """Knobs of the synthetic cohort (shapes in voxels, spacings in mm, rates in [0, 1])."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ct_shape: tuple[int, int, int] = (48, 48, 24)  # columns (x), rows (y), slices (z)
    ct_pixel_spacing: float = Field(1.5, gt=0)
    ct_slice_spacing: float = Field(2.5, gt=0)
    ct_noise_hu: float = Field(12.0, ge=0)
    lesion_hu: tuple[float, float] = (40.0, 90.0)  # above soft tissue
    # >= 8 mm keeps the lesion >= 2 voxels in radius on the 4 mm training grid.
    lesion_radius_mm: tuple[float, float] = (8.0, 11.0)
    mri_shape: tuple[int, int, int] = (32, 32, 32)
    mri_spacing: float = Field(2.0, gt=0)
    mri_region_contrast: float = Field(0.6, gt=0)  # relative brightness of the MRI finding
    mri_region_radius_mm: tuple[float, float] = (8.0, 12.0)
    finding_rate: float = Field(0.5, ge=0, le=1)  # prevalence of each latent finding
    label_noise: float = Field(0.03, ge=0, le=1)  # probability of flipping the vote
    ct_missing_rate: float = Field(0.0, ge=0, le=1)
    mri_missing_rate: float = Field(0.10, ge=0, le=1)
    note_missing_rate: float = Field(0.05, ge=0, le=1)
    ct_reversed_z_rate: float = Field(0.3, ge=0, le=1)  # InstanceNumber runs head to feet
    mri_flip_rate: float = Field(0.3, ge=0, le=1)  # per axis: stored flipped, affine negated
    # Which modalities are written (manifest columns follow); the rest are drawn but absent.
    modalities: tuple[str, ...] = ("ct", "mri", "note")
    label_rule: Literal["majority", "xor"] = "majority"

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if not self.modalities or set(self.modalities) - set(ALL_MODALITIES):
            raise ValueError(f"modalities must be a non-empty subset of {ALL_MODALITIES}")
        if self.label_rule == "xor" and len(self.modalities) < 2:
            raise ValueError("label_rule 'xor' needs two modalities (the first two are used)")
        return self

    def label(self, findings: dict[str, bool]) -> int:
        """The noise-free label of a patient's latent findings under ``label_rule``."""
        if self.label_rule == "xor":
            a, b = self.modalities[:2]
            return int(findings[a] != findings[b])
        return int(sum(findings.values()) >= 2)


@dataclass
class SynthResult:
    """Where the cohort landed and what it holds."""

    out: Path
    manifest: pd.DataFrame
    truth: pd.DataFrame
    expected_quarantine: pd.DataFrame
    seconds: float = 0.0

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.csv"


# --------------------------------------------------------------------------- fake PHI

_FIRST_F = ["Alice", "Beatrice", "Clara", "Dorothy", "Elena", "Fiona", "Greta", "Hannah",
            "Ingrid", "Julia", "Katrin", "Louisa", "Marta", "Nadia", "Olivia", "Priya",
            "Rosalind", "Sofia", "Tamsin", "Ursula", "Vera", "Wilma", "Yvonne", "Zelda"]
_FIRST_M = ["Arthur", "Bruno", "Casimir", "Desmond", "Emil", "Felix", "Gideon", "Hector",
            "Ivan", "Jasper", "Konrad", "Leopold", "Magnus", "Nikolai", "Oswald", "Piotr",
            "Quentin", "Rupert", "Silas", "Tobias", "Ulrich", "Viktor", "Walter", "Xavier"]
_LAST = ["Abernathy", "Blackwood", "Castellano", "Delacroix", "Eriksen", "Fairbanks",
         "Gallagher", "Holloway", "Ivanova", "Jorgensen", "Kowalczyk", "Lindqvist",
         "Montgomery", "Nakamura", "Okonkwo", "Pemberton", "Quintero", "Rasmussen",
         "Szymanski", "Thornbury", "Underwood", "Vasquez", "Whitcombe", "Yamamoto",
         "Zimmermann", "Achterberg", "Brannigan", "Cavendish", "Drummond", "Esterhazy"]
_INSTITUTIONS = ["Riverbend General Hospital", "St. Aldric Medical Center",
                 "Northgate University Clinic", "Harborview Fictional Infirmary"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]


@dataclass
class _Person:
    mrn: str
    first: str
    last: str
    sex: str  # "F" / "M"
    dob: tuple[int, int, int]
    visit: tuple[int, int, int]
    phone: str
    institution: str
    written: dict[str, set[str]] = field(default_factory=dict)

    def wrote(self, kind: str, value: str) -> str:
        """Record a PHI string exactly as it is written into a file; returns it."""
        self.written.setdefault(kind, set()).add(value)
        return value


def _date_forms(d: tuple[int, int, int]) -> list[str]:
    y, m, day = d
    return [
        f"{m:02d}/{day:02d}/{y}",
        f"{y}-{m:02d}-{day:02d}",
        f"{day} {_MONTHS[m - 1][:3]} {y}",
        f"{_MONTHS[m - 1]} {day}, {y}",
    ]


def _dicom_date(d: tuple[int, int, int]) -> str:
    return f"{d[0]:04d}{d[1]:02d}{d[2]:02d}"


def _fake_person(rng: np.random.Generator, used_mrns: set[str]) -> _Person:
    sex = "F" if rng.random() < 0.5 else "M"
    first = str(rng.choice(_FIRST_F if sex == "F" else _FIRST_M))
    while True:  # MRNs are unique; a letter prefix keeps spreadsheets from eating zeros
        mrn = f"{'KLMNPRSTW'[int(rng.integers(9))]}{int(rng.integers(10**6, 10**7))}"
        if mrn not in used_mrns:
            used_mrns.add(mrn)
            break
    dob = (int(rng.integers(1935, 2001)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    visit = (int(rng.integers(2019, 2026)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    phone = f"({int(rng.integers(201, 990))}) 555-{int(rng.integers(0, 10000)):04d}"
    return _Person(mrn, first, str(rng.choice(_LAST)), sex, dob, visit, phone,
                   str(rng.choice(_INSTITUTIONS)))


# --------------------------------------------------------------------------- notes

_CARDIAC = [
    "elevated troponin with substernal chest pain radiating to the left arm",
    "troponin I rising on serial draws, chest pressure since this morning",
    "crushing chest pain with diaphoresis and nausea, troponin elevated",
    "new ST-segment depression in the lateral leads and positive troponin",
    "exertional angina now occurring at rest, high-sensitivity troponin above the cutoff",
    "acute chest tightness, shortness of breath, and elevated cardiac enzymes",
    "suspected non-ST elevation myocardial infarction given troponin elevation",
    "chest pain with dyspnea; cardiology consulted for acute coronary syndrome",
]
_BENIGN = [
    "routine follow-up visit, no acute complaints today",
    "seasonal allergies well controlled with a daily antihistamine",
    "mild knee pain after running, improving with rest and ice",
    "annual physical examination, feeling well and exercising regularly",
    "medication refill for hypothyroidism, thyroid levels stable",
    "minor skin rash on the forearm, likely contact dermatitis",
    "follow-up of controlled hypertension, home readings at goal",
    "requests travel vaccinations, otherwise healthy",
]
_PLANS_CARDIAC = [
    "Plan: admit to telemetry, serial troponins, aspirin and heparin, cardiology review.",
    "Plan: urgent cardiology consult, start antiplatelet therapy, repeat ECG in one hour.",
    "Plan: admit for chest pain workup and possible catheterization.",
]
_PLANS_BENIGN = [
    "Plan: continue current medications, return in twelve months.",
    "Plan: reassurance, follow up as needed.",
    "Plan: routine labs at next visit, no changes today.",
]
_FILLER = [
    "Allergies: no known drug allergies.",
    "Social history: lives with family, non-smoker.",
    "Vitals recorded by nursing staff.",
    "Past history reviewed and unchanged.",
    "Medications reconciled with the pharmacy list.",
]


def _name_line(p: _Person, rng: np.random.Generator) -> str:
    forms = [
        lambda: f"Patient: {p.wrote('names', f'{p.first} {p.last}')}",
        lambda: f"Name: {p.wrote('names', f'{p.last}, {p.first}')}",
        lambda: f"Patient name: {p.wrote('names', f'{p.first} {p.last}')}",
    ]
    return forms[int(rng.integers(len(forms)))]()


def _mrn_line(p: _Person, rng: np.random.Generator) -> str:
    forms = ["MRN: {}", "MRN {}", "MRN#{}"]
    return forms[int(rng.integers(len(forms)))].format(p.wrote("mrns", p.mrn))


def _date_line(p: _Person, rng: np.random.Generator) -> str:
    dob = p.wrote("birth_dates", _date_forms(p.dob)[int(rng.integers(4))])
    visit = p.wrote("visit_dates", _date_forms(p.visit)[int(rng.integers(4))])
    forms = ["DOB: {dob}    Visit date: {visit}", "Date of birth: {dob}. Seen on {visit}.",
             "D.O.B. {dob} | Date of service: {visit}"]
    return forms[int(rng.integers(len(forms)))].format(dob=dob, visit=visit)


def _note_text(p: _Person, finding: bool, rng: np.random.Generator) -> str:
    """A note: PHI header lines, a narrative with the finding's wording, filler and plan."""
    honor = "Ms." if p.sex == "F" else "Mr."
    age = p.visit[0] - p.dob[0]
    sex_word = "woman" if p.sex == "F" else "man"
    pool = _CARDIAC if finding else _BENIGN
    picks = rng.choice(len(pool), size=2, replace=False)
    narrative = (
        f"{honor} {p.wrote('names', p.last)} is a {age}-year-old {sex_word} presenting with "
        f"{pool[picks[0]]}. Also notes {pool[picks[1]]}."
    )
    fill = [_FILLER[i] for i in rng.choice(len(_FILLER), size=2, replace=False)]
    plans = _PLANS_CARDIAC if finding else _PLANS_BENIGN
    phone = f"Contact phone: {p.wrote('phones', p.phone)}"
    header = [_name_line(p, rng), _mrn_line(p, rng), _date_line(p, rng)]
    order = rng.permutation(3)
    lines = [header[i] for i in order]
    lines += ["", narrative, *fill, str(plans[int(rng.integers(len(plans)))]), phone,
              f"Facility: {p.wrote('institutions', p.institution)}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CT (DICOM)


@dataclass
class _CtGeometry:
    origin: tuple[float, float, float]  # LPS position of the lowest-z slice's first pixel
    pixel_spacing: float
    slice_spacing: float
    shape: tuple[int, int, int]  # (columns, rows, slices)
    reversed_z: bool


def _ct_volume(
    cfg: SynthConfig, geo: _CtGeometry, finding: bool, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """HU volume (x, y, z) of a torso-like phantom; a bright sphere when ``finding``."""
    nx, ny, nz = geo.shape
    ps, dz = geo.pixel_spacing, geo.slice_spacing
    x = (np.arange(nx) - (nx - 1) / 2) * ps
    y = (np.arange(ny) - (ny - 1) / 2) * ps
    z = np.arange(nz) * dz
    xx, yy = np.meshgrid(x, y, indexing="ij")
    ax, ay = 0.45 * nx * ps * rng.uniform(0.9, 1.0), 0.38 * ny * ps * rng.uniform(0.9, 1.0)
    r2 = (xx / ax) ** 2 + (yy / ay) ** 2
    sl = np.full((nx, ny), -1000.0, dtype=np.float32)
    sl[r2 <= 1.0] = -90.0  # subcutaneous fat rim
    sl[r2 <= 0.8] = TISSUE_HU
    spine = (xx**2 + (yy - 0.6 * ay) ** 2) <= (0.12 * ay) ** 2  # +y is posterior (LPS)
    sl[spine] = 450.0
    vol = np.repeat(sl[:, :, None], nz, axis=2)
    # Low-contrast organ-like blobs: distractors, so "any bright spot" is not the finding.
    zz = z[None, None, :]
    for _ in range(2):
        c = (rng.uniform(-0.4, 0.4) * ax, rng.uniform(-0.4, 0.2) * ay,
             rng.uniform(0.2, 0.8) * z[-1])
        rad = rng.uniform(8.0, 14.0)
        d2 = (xx[..., None] - c[0]) ** 2 + (yy[..., None] - c[1]) ** 2 + (zz - c[2]) ** 2
        vol[(d2 <= rad**2) & (vol == TISSUE_HU)] += rng.uniform(-15.0, 15.0)
    info = {"ct_lesion_x": np.nan, "ct_lesion_y": np.nan, "ct_lesion_z": np.nan,
            "ct_lesion_radius_mm": np.nan, "ct_lesion_hu": np.nan}
    if finding:
        rad = rng.uniform(*cfg.lesion_radius_mm)
        hu = rng.uniform(*cfg.lesion_hu)
        for _ in range(100):  # inside soft tissue, clear of the spine
            c = (rng.uniform(-0.45, 0.45) * ax, rng.uniform(-0.5, 0.2) * ay,
                 rng.uniform(min(rad, z[-1] / 2), max(z[-1] - rad, z[-1] / 2)))
            if (c[0] / ax) ** 2 + (c[1] / ay) ** 2 <= 0.35:
                break
        d2 = (xx[..., None] - c[0]) ** 2 + (yy[..., None] - c[1]) ** 2 + (zz - c[2]) ** 2
        vol[d2 <= rad**2] = TISSUE_HU + hu
        o = geo.origin
        # Report the centre in patient coordinates (LPS) for geometry tests.
        info.update(ct_lesion_x=o[0] + c[0] + (nx - 1) / 2 * ps,
                    ct_lesion_y=o[1] + c[1] + (ny - 1) / 2 * ps, ct_lesion_z=o[2] + c[2],
                    ct_lesion_radius_mm=rad, ct_lesion_hu=hu)
    vol += rng.normal(0.0, cfg.ct_noise_hu, vol.shape).astype(np.float32)
    return vol, info


def _fmt(v: float) -> str:
    """DICOM DS text (<= 16 chars) that round-trips the value we record in truth.csv."""
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _token(rng: np.random.Generator) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, size=8, dtype=np.uint8))


def _write_series(
    folder: Path,
    vol: np.ndarray,
    geo: _CtGeometry,
    p: _Person,
    uids: dict[str, str],
    rng: np.random.Generator,
    modality: str = "CT",
    series_number: int = 2,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> list[Path]:
    """Write ``vol`` (x, y, z in HU) as one file per slice named by a random token."""
    from pydicom import __version__ as pydicom_version
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        MRImageStorage,
        generate_uid,
    )

    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}[modality]
    nx, ny, nz = geo.shape
    folder.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = "1.2"  # placeholders, replaced per slice
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom_version}"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = sop_class
    study_date = p.wrote("dicom_dates", _dicom_date(p.visit))
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "clinfuse-synth"
    ds.InstitutionName = p.wrote("institutions", p.institution)
    ds.ReferringPhysicianName = ""
    ds.PatientName = p.wrote("dicom_names", f"{p.last}^{p.first}")
    ds.PatientID = p.wrote("mrns", p.mrn)
    ds.PatientBirthDate = p.wrote("birth_dates", _dicom_date(p.dob))
    ds.PatientSex = p.sex
    ds.SliceThickness = _fmt(geo.slice_spacing)
    ds.SpacingBetweenSlices = _fmt(geo.slice_spacing)
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.SOPInstanceUID = "1.2"
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = ["0", "0", "0"]
    ds.SliceLocation = "0"
    ds.add_new(0x7FE00010, "OW", b"")
    ds.ImageOrientationPatient = [_fmt(v) for v in CT_ORIENTATION]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [_fmt(geo.pixel_spacing), _fmt(geo.pixel_spacing)]  # row, column
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if modality == "CT":
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _fmt(HU_INTERCEPT), "1", "HU"
        stored = np.clip(np.rint(vol - HU_INTERCEPT), -32768, 32767).astype("<i2")
    else:
        stored = np.clip(np.rint(vol), -32768, 32767).astype("<i2")
    # pydicom spends ~3 ms per file re-encoding ~50 identical elements; encode the constant
    # parts once and splice in the five that change per slice (same bytes as dcmwrite).
    enc = _SliceEncoder(ds)
    paths = []
    for inst in range(1, nz + 1):
        k = nz - inst if geo.reversed_z else inst - 1  # slice index along +z
        z = geo.origin[2] + k * geo.slice_spacing
        # DICOM pixel rows run along +y (column direction), columns along +x.
        data = enc.encode(
            sop=generate_uid(entropy_srcs=[uids["series"], str(inst)]),
            instance=inst,
            position=[_fmt(geo.origin[0]), _fmt(geo.origin[1]), _fmt(z)],
            pixels=np.ascontiguousarray(stored[:, :, k].T).tobytes(),
        )
        path = folder / f"{_token(rng)}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


_VARYING = (0x00080018, 0x00200013, 0x00200032, 0x00201041, 0x7FE00010)
_META_SOP = 0x00020003


class _SliceEncoder:
    """Explicit-VR little-endian Part-10 bytes of a series' slices, constant parts cached.

    ``_VARYING`` are the per-slice elements (SOPInstanceUID, InstanceNumber,
    ImagePositionPatient, SliceLocation, PixelData); the template dataset must hold them.
    A test checks the bytes equal pydicom's ``dcmwrite`` of the same dataset.
    """

    def __init__(self, template: Any) -> None:
        self.meta = _split(template.file_meta, (0x00020000, _META_SOP))[1:]
        self.segments = _split(template, _VARYING)

    def encode(self, sop: str, instance: int, position: list[str], pixels: bytes) -> bytes:
        uid = _element(0x00080018, "UI", sop)
        meta = self.meta[0] + _element(_META_SOP, "UI", sop) + self.meta[1]
        varying = [
            uid,
            _element(0x00200013, "IS", str(instance)),
            _element(0x00200032, "DS", "\\".join(position)),
            _element(0x00201041, "DS", position[2]),
            _element(0x7FE00010, "OW", pixels),
        ]
        parts = [bytes(128), b"DICM", _element(0x00020000, "UL", len(meta)), meta]
        parts.append(self.segments[0])
        for elem, seg in zip(varying, self.segments[1:], strict=True):
            parts += [elem, seg]
        return b"".join(parts)


def _split(ds: Any, tags: tuple[int, ...]) -> list[bytes]:
    """Encode ``ds`` without ``tags``, cut where each of them sits (all must be present)."""
    from pydicom.dataset import Dataset

    segments, cur = [], Dataset()
    for elem in ds:  # iteration is in tag order, as the file must be
        if elem.tag in tags:
            segments.append(_encode(cur))
            cur = Dataset()
        else:
            cur.add(elem)
    segments.append(_encode(cur))
    if len(segments) != len(tags) + 1:
        raise RuntimeError("slice template lacks a per-slice element")  # a bug in this file
    return segments


def _element(tag: int, vr: str, value: str | bytes) -> bytes:
    """One explicit-VR little-endian element (UI padded with NUL, text with space)."""
    if vr == "UL":
        raw = int(value).to_bytes(4, "little")
    else:
        raw = value if isinstance(value, bytes) else value.encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr in ("UI", "OW", "OB") else b" "
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + vr.encode()
    if vr in ("OB", "OW"):  # long form: 2 reserved bytes + 4-byte length
        return head + b"\x00\x00" + len(raw).to_bytes(4, "little") + raw
    return head + len(raw).to_bytes(2, "little") + raw


def _encode(ds: Any) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _uids(seed: int, key: str, series: str = "ct") -> dict[str, str]:
    """Deterministic Study/Series/Frame UIDs from (seed, patient key, series name)."""
    from pydicom.uid import generate_uid

    base = [f"clinfuse-synth:{seed}", key]
    return {
        "study": generate_uid(entropy_srcs=[*base, "study"]),
        "series": generate_uid(entropy_srcs=[*base, series, "series"]),
        "frame": generate_uid(entropy_srcs=[*base, series, "frame"]),
    }


# --------------------------------------------------------------------------- MRI (NIfTI)


def _mri_volume(
    cfg: SynthConfig, finding: bool, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """Head-like phantom (i, j, k) in canonical RAS order; a bright region when ``finding``."""
    n = np.asarray(cfg.mri_shape)
    s = cfg.mri_spacing
    grids = np.meshgrid(*[(np.arange(k) - (k - 1) / 2) * s for k in n], indexing="ij")
    semi = 0.42 * n * s * rng.uniform(0.9, 1.0, 3)
    r2 = sum((g / a) ** 2 for g, a in zip(grids, semi, strict=True))
    vol = np.where(r2 <= 1.0, 300.0, 8.0).astype(np.float32)
    vol[r2 <= 0.08] = 120.0  # ventricle-like dark core
    vol *= (1.0 + 0.15 * grids[2] / (n[2] * s)).astype(np.float32)  # smooth bias field
    info = {"mri_region_i": np.nan, "mri_region_j": np.nan, "mri_region_k": np.nan,
            "mri_region_radius_mm": np.nan, "mri_region_sign": 0.0}
    # Positives get a bright region; half the negatives a dark one (a distractor).
    sign = 1.0 if finding else (-1.0 if rng.random() < 0.5 else 0.0)
    if sign:
        rad = rng.uniform(*cfg.mri_region_radius_mm)
        for _ in range(100):
            c = rng.uniform(-0.5, 0.5, 3) * semi
            if sum((c / semi) ** 2) <= 0.3 and sum((c / semi) ** 2) >= 0.12:
                break
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True))
        contrast = cfg.mri_region_contrast if sign > 0 else -0.4
        vol[d2 <= rad**2] *= np.float32(1.0 + contrast)
        idx = c / s + (n - 1) / 2
        info.update(mri_region_i=idx[0], mri_region_j=idx[1], mri_region_k=idx[2],
                    mri_region_radius_mm=rad, mri_region_sign=sign)
    vol = np.abs(vol + rng.normal(0.0, 15.0, vol.shape).astype(np.float32))  # Rician-like
    return vol.astype(np.float32), info


def _write_nifti(
    path: Path, vol: np.ndarray, cfg: SynthConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """Save with a real affine; some axes stored flipped (affine negated to match)."""
    import nibabel as nib

    n = np.asarray(vol.shape)
    s = cfg.mri_spacing
    origin = np.round(rng.uniform(-80, -40, 3) * 4) / 4  # quarter-mm grid: exact in text
    affine = np.diag([s, s, s, 1.0])
    affine[:3, 3] = origin
    flips = [bool(rng.random() < cfg.mri_flip_rate) for _ in range(3)]
    data = vol
    for ax, f in enumerate(flips):
        if f:  # voxel i' = n-1-i: same world content, mirrored storage
            data = np.flip(data, axis=ax)
            affine[:3, 3] += affine[:3, ax] * (n[ax] - 1)
            affine[:3, ax] *= -1
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # Gzip with mtime 0 and no file name: identical bytes for identical volumes.
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))
    return {"mri_affine": json.dumps(np.round(affine, 4).tolist()),
            "mri_flip_i": flips[0], "mri_flip_j": flips[1], "mri_flip_k": flips[2],
            "mri_spacing": s}


# --------------------------------------------------------------------------- one patient


@dataclass
class _Case:
    """One synthesized patient: where its files are and what was planted."""

    idx: int
    name: str  # case_0001
    cfg: SynthConfig
    person: _Person
    rng: np.random.Generator
    findings: dict[str, bool]
    label: int
    row: dict[str, str]
    truth: dict[str, Any]
    ct_geo: _CtGeometry | None = None
    ct_vol: np.ndarray | None = None
    ct_files: list[Path] = field(default_factory=list)
    kind: str = ""  # planted bad-input kind, "" for good patients
    expected: dict[str, ReasonCode] = field(default_factory=dict)


def _make_case(out: Path, cfg: SynthConfig, seed: int, idx: int, used: set[str]) -> _Case:
    # One child stream per patient: adding bad inputs never changes the good patients.
    rng = np.random.default_rng(np.random.SeedSequence([seed, idx]))
    person = _fake_person(rng, used)
    findings = {m: bool(rng.random() < cfg.finding_rate) for m in ("ct", "mri", "note")}
    flipped = bool(rng.random() < cfg.label_noise)
    label = cfg.label(findings) ^ int(flipped)
    # Drawn for every modality, written or not, so the random streams stay aligned.
    present = {m: bool(rng.random() >= getattr(cfg, f"{m}_missing_rate")) and m in cfg.modalities
               for m in ALL_MODALITIES}
    if not any(present.values()):
        present[cfg.modalities[0]] = True  # a patient with nothing to read is no patient
    name = f"case_{idx + 1:04d}"
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[str, Any] = {
        "patient_id": person.mrn, "case": name, "label": label, "label_flipped": flipped,
        **{f"{m}_finding": int(v) for m, v in findings.items()},
        **{f"{m}_present": v for m, v in present.items()},
    }
    row = {"patient_id": person.mrn, "ct": "", "mri": "", "note": "", "label": str(label)}
    case = _Case(idx, name, cfg, person, rng, findings, label, row, truth)

    # The CT geometry is drawn even when the CT is absent so streams stay aligned.
    nx, ny, nz = cfg.ct_shape
    ps, dz = cfg.ct_pixel_spacing, cfg.ct_slice_spacing
    origin = (round(-(nx - 1) / 2 * ps + rng.uniform(-20, 20) * 4) / 4,
              round(-(ny - 1) / 2 * ps + rng.uniform(-20, 20) * 4) / 4,
              round(rng.uniform(-200, 100) * 4) / 4)
    geo = _CtGeometry(origin, ps, dz, (nx, ny, nz), bool(rng.random() < cfg.ct_reversed_z_rate))
    vol, info = _ct_volume(cfg, geo, findings["ct"], rng)
    case.ct_geo, case.ct_vol = geo, vol
    truth.update(info)
    truth.update(ct_origin_x=origin[0], ct_origin_y=origin[1], ct_origin_z=origin[2],
                 ct_pixel_spacing=ps, ct_slice_spacing=dz, ct_columns=nx, ct_rows=ny,
                 ct_slices=nz, ct_reversed_z=geo.reversed_z,
                 ct_orientation="\\".join(_fmt(v) for v in CT_ORIENTATION))
    if present["ct"]:
        case.ct_files = _write_series(folder / "ct", vol, geo, person,
                                      _uids(seed, name), rng)
        row["ct"] = f"{name}/ct"

    mri, minfo = _mri_volume(cfg, findings["mri"], rng)
    truth.update(minfo)
    if present["mri"]:
        truth.update(_write_nifti(folder / "mri.nii.gz", mri, cfg, rng))
        row["mri"] = f"{name}/mri.nii.gz"

    before = {k: set(v) for k, v in person.written.items()}
    text = _note_text(person, findings["note"], rng)  # drawn either way: streams stay aligned
    if not present["note"]:
        person.written = before  # phi.json lists only what reached a file
    else:
        (folder / "note.txt").write_text(text, encoding="utf-8")
        row["note"] = f"{name}/note.txt"
    return case


# --------------------------------------------------------------------------- bad inputs


def _ensure(case: _Case, out: Path, modality: str, seed: int) -> None:
    """Make sure the modality a bad input corrupts exists (missing-rate may have dropped it)."""
    folder = out / case.name
    if case.row[modality]:
        return
    if modality == "ct":
        case.ct_files = _write_series(folder / "ct", case.ct_vol, case.ct_geo, case.person,
                                      _uids(seed, case.name), case.rng)
        case.row["ct"] = f"{case.name}/ct"
    elif modality == "note":
        text = _note_text(case.person, case.findings["note"], case.rng)
        (folder / "note.txt").write_text(text, encoding="utf-8")
        case.row["note"] = f"{case.name}/note.txt"
    case.truth[f"{modality}_present"] = True


def _bad_truncated_slice(case: _Case, out: Path, seed: int) -> None:
    _ensure(case, out, "ct", seed)
    victim = sorted(case.ct_files)[len(case.ct_files) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - len(data) // 3])  # cut inside the pixel data
    case.expected["ct"] = ReasonCode.TRUNCATED_FILE


def _slice_file(case: _Case, k: int) -> Path:
    """File holding slice index ``k`` (along +z) of the case's CT series."""
    from pydicom import dcmread

    z = case.ct_geo.origin[2] + k * case.ct_geo.slice_spacing
    for f in case.ct_files:
        if abs(float(dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) - z) < 1e-3:
            return f
    raise RuntimeError("slice not found")  # a bug in the writer, not user input


def _bad_missing_slice(case: _Case, out: Path, seed: int) -> None:
    _ensure(case, out, "ct", seed)
    _slice_file(case, case.ct_geo.shape[2] // 2).unlink()
    case.expected["ct"] = ReasonCode.MISSING_SLICES


def _bad_mixed_series(case: _Case, out: Path, seed: int) -> None:
    _ensure(case, out, "ct", seed)
    # A second reconstruction of the same study dropped into the same folder.
    _write_series(out / case.name / "ct", case.ct_vol, case.ct_geo, case.person,
                  _uids(seed, case.name, "recon2"), case.rng, series_number=3)
    case.expected["ct"] = ReasonCode.MULTIPLE_SERIES


def _bad_not_dicom(case: _Case, out: Path, seed: int) -> None:
    folder = out / case.name / "ct_export"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):  # look like slices by name, are an HTML error page by content
        (folder / f"IM{i:04d}.dcm").write_text(
            "<html><body>Export failed: session expired</body></html>\n", encoding="utf-8")
    case.row["ct"] = f"{case.name}/ct_export"
    case.expected["ct"] = ReasonCode.NOT_DICOM


# Bad notes go to a new file: the good note stays on disk, so phi.json stays true.
def _bad_empty_note(case: _Case, out: Path, seed: int) -> None:
    (out / case.name / "note_export.txt").write_bytes(b"")
    case.row["note"] = f"{case.name}/note_export.txt"
    case.expected["note"] = ReasonCode.EMPTY_NOTE


def _bad_binary_note(case: _Case, out: Path, seed: int) -> None:
    junk = b"%PDF-1.4\n\x00\x01\x02" + case.rng.integers(0, 256, 512, dtype=np.uint8).tobytes()
    (out / case.name / "note_export.txt").write_bytes(junk)
    case.row["note"] = f"{case.name}/note_export.txt"
    case.expected["note"] = ReasonCode.NOTE_NOT_TEXT


def _bad_duplicate_id(case: _Case, out: Path, seed: int) -> None:
    case.expected["*"] = ReasonCode.DUPLICATE_PATIENT  # patient_id rewritten by the caller


def _bad_label(case: _Case, out: Path, seed: int) -> None:
    case.row["label"] = "maybe"
    case.expected["*"] = ReasonCode.BAD_LABEL


def _bad_outside_root(case: _Case, out: Path, seed: int) -> None:
    case.row["mri"] = "../outside.nii.gz"
    case.expected["mri"] = ReasonCode.PATH_OUTSIDE_ROOT


def _bad_missing_file(case: _Case, out: Path, seed: int) -> None:
    (out / case.name / "mri.nii.gz").unlink(missing_ok=True)
    case.row["mri"] = f"{case.name}/mri_followup.nii.gz"
    case.expected["mri"] = ReasonCode.MISSING_FILE


def _bad_nan_nifti(case: _Case, out: Path, seed: int) -> None:
    vol, _ = _mri_volume(case.cfg, case.findings["mri"], case.rng)
    c = np.asarray(vol.shape) // 2
    vol[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = np.nan  # failed recon
    _write_nifti(out / case.name / "mri.nii.gz", vol, case.cfg, case.rng)
    case.row["mri"] = f"{case.name}/mri.nii.gz"
    case.expected["mri"] = ReasonCode.NON_FINITE_VALUES


def _bad_mr_as_ct(case: _Case, out: Path, seed: int) -> None:
    folder = out / case.name / "mr_series"
    mr = np.clip(case.ct_vol + 1000.0, 0, None) / 4.0  # MR-like unsigned intensities
    _write_series(folder, mr, case.ct_geo, case.person, _uids(seed, case.name, "mr"),
                  case.rng, modality="MR", series_number=5,
                  image_type=("ORIGINAL", "PRIMARY", "M", "ND"))
    case.row["ct"] = f"{case.name}/mr_series"
    case.expected["ct"] = ReasonCode.WRONG_MODALITY


# Planted in this order, cycling: bad_inputs=k plants the first k (mod 12).
BAD_INPUT_KINDS: dict[str, Callable[[_Case, Path, int], None]] = {
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


def _expected_rows(manifest: pd.DataFrame, cases: list[_Case]) -> pd.DataFrame:
    """Expected quarantine entries, following ingest's order of checks.

    Row-level problems (duplicate ID, bad label) reject every given input of the row,
    including the good row whose ID was duplicated; otherwise each planted modality.
    """
    counts = manifest["patient_id"].value_counts()
    out = []
    for r, case in enumerate(cases):
        given = [m for m in ("ct", "mri", "note") if case.row[m]]
        if counts[case.row["patient_id"]] > 1:
            codes = dict.fromkeys(given, ReasonCode.DUPLICATE_PATIENT)
        elif "*" in case.expected:
            codes = dict.fromkeys(given, case.expected["*"])
        else:
            codes = case.expected
        out += [{"row": r, "patient_id": case.row["patient_id"], "modality": m,
                 "expected_code": str(c), "kind": case.kind or "duplicated"}
                for m, c in sorted(codes.items())]
    return pd.DataFrame(out, columns=EXPECTED_COLUMNS)


# --------------------------------------------------------------------------- cohort


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)


def synth_cohort(
    out: Path,
    patients: int = 50,
    seed: int = 0,
    config: SynthConfig | None = None,
    bad_inputs: int = 0,
) -> SynthResult:
    """Write a synthetic cohort under ``out`` (see module docstring and docs/data.md).

    ``bad_inputs`` adds that many extra patients, each with one planted bad input
    (kinds cycle through ``BAD_INPUT_KINDS``); ``expected_quarantine.csv`` lists the
    reason code ingest must give each of them.
    """
    t0 = time.perf_counter()
    cfg = config or SynthConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    cases = [_make_case(out, cfg, seed, i, used) for i in range(patients)]
    kinds = list(BAD_INPUT_KINDS)
    for j in range(bad_inputs):
        case = _make_case(out, cfg, seed, patients + j, used)
        case.kind = kinds[j % len(kinds)]
        BAD_INPUT_KINDS[case.kind](case, out, seed)
        if case.kind == "duplicate_id":
            # Reuse the first good patient's MRN (or the first row's when none is good).
            target = next((c for c in cases if not c.kind), cases[0] if cases else case)
            case.row["patient_id"] = target.row["patient_id"]
        cases.append(case)
    for case in cases:
        case.truth["planted"] = case.kind
        case.truth["manifest_patient_id"] = case.row["patient_id"]

    columns = [c for c in MANIFEST_COLUMNS if c not in ALL_MODALITIES or c in cfg.modalities]
    manifest = pd.DataFrame([c.row for c in cases], columns=columns)
    truth = pd.DataFrame([c.truth for c in cases])
    expected = _expected_rows(manifest, cases)
    _write_csv(manifest, out / "manifest.csv")
    _write_csv(truth, out / "truth.csv")
    _write_csv(expected, out / "expected_quarantine.csv")
    _write_phi(out / "phi.json", cases)
    seconds = time.perf_counter() - t0
    log.info("synthesized %d patients (+%d planted bad inputs) in %.1fs",
             patients, bad_inputs, seconds)
    return SynthResult(out, manifest, truth, expected, seconds)


def _write_phi(path: Path, cases: list[_Case]) -> None:
    """Every fake PHI string exactly as written into a file, per kind and per patient."""
    kinds = ["names", "dicom_names", "mrns", "birth_dates", "visit_dates", "dicom_dates",
             "phones", "institutions"]
    per_patient = [
        {"case": c.name, "patient_id": c.person.mrn,
         **{k: sorted(c.person.written.get(k, ())) for k in kinds}}
        for c in cases
    ]
    flat = {k: sorted({v for c in cases for v in c.person.written.get(k, ())}) for k in kinds}
    path.write_text(json.dumps({**flat, "patients": per_patient}, indent=1) + "\n",
                    encoding="utf-8")


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
    people: list[_Person] = []
    rows: list[dict[str, str]] = []

    def row(code: str, modality: str, **cells: str) -> dict[str, str]:
        people.append(_fake_person(rng, used))
        r = {"patient_id": people[-1].mrn, "ct": "", "mri": "", "note": "", "label": "1",
             "split": "train", "expected_modality": modality, "expected_code": code, **cells}
        rows.append(r)
        return r

    def series(name: str, nz: int = 12, modality: str = "CT") -> tuple[_CtGeometry, Path]:
        geo = _CtGeometry((-12.0, -12.0, 0.0), 1.5, 2.5, (16, 16, nz), False)
        vol = np.full((16, 16, nz), TISSUE_HU, dtype=np.float32)
        folder = out / name
        _write_series(folder, vol, geo, people[-1], _uids(seed, name), rng, modality=modality)
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
    vol, _ = _mri_volume(cfg, False, rng)
    _write_nifti(out / "good/mri.nii.gz", vol, cfg, rng)
    (out / "good/note.txt").write_text(_note_text(people[-1], False, rng), encoding="utf-8")

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
        rewrite(f, ImagePositionPatient=["-12", "-12", _fmt(i * 2.5 + 0.9)])

    row("INCONSISTENT_ORIENTATION", "ct", ct="orientation")
    _, folder = series("orientation")
    rewrite(by_z(folder)[3], ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])

    row("INCONSISTENT_SHAPE", "ct", ct="shape")
    _, folder = series("shape")
    f = by_z(folder)[3]
    rewrite(f, Rows=8, PixelData=np.zeros((8, 16), "<i2").tobytes())

    row("MULTIPLE_SERIES", "ct", ct="mixed")
    series("mixed")
    geo = _CtGeometry((-12.0, -12.0, 0.0), 1.5, 2.5, (16, 16, 12), False)
    _write_series(out / "mixed", np.zeros((16, 16, 12), np.float32), geo, people[-1],
                  _uids(seed, "mixed", "second"), rng, series_number=9)

    row("TOO_FEW_SLICES", "ct", ct="few")  # needs the CT spec's min_slices >= 3 (tiny: 8)
    series("few", nz=2)

    row("NON_FINITE_VALUES", "mri", mri="nan/mri.nii.gz")
    (out / "nan").mkdir(exist_ok=True)
    vol, _ = _mri_volume(cfg, False, rng)
    vol[4:8, 4:8, 4:8] = np.nan
    _write_nifti(out / "nan/mri.nii.gz", vol, cfg, rng)

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
        (out / f"notes/dup_{i}.txt").write_text(_note_text(people[-1], False, rng),
                                                encoding="utf-8")
    rows[-1]["patient_id"] = rows[-2]["patient_id"]

    row("BAD_LABEL", "*", note="notes/label.txt", label="maybe")
    (out / "notes/label.txt").write_text(_note_text(people[-1], True, rng), encoding="utf-8")
    row("BAD_SPLIT", "*", note="notes/split.txt", split="holdout")
    (out / "notes/split.txt").write_text(_note_text(people[-1], True, rng), encoding="utf-8")

    row("UNSUPPORTED_FORMAT", "ct", ct="good/note.txt#1.2.3.4")  # '#series' on a file

    if hasattr(os, "mkfifo"):  # a FIFO would block a reader for ever: never opened
        row("NOT_REGULAR_FILE", "note", note="notes/fifo.txt")
        if not (out / "notes/fifo.txt").exists():
            os.mkfifo(out / "notes/fifo.txt")
    row("NOTE_TOO_LARGE", "note", note="notes/huge.txt")
    (out / "notes/huge.txt").write_bytes(b"a " * 500_000 + b"b")  # NoteSpec.max_bytes + 1
    row("UNSUPPORTED_NOTE_FORMAT", "note", note="notes/visit.rtf")
    (out / "notes/visit.rtf").write_text(r"{\rtf1 " + _note_text(people[-1], False, rng) + "}",
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
    c20, s20 = _fmt(float(np.cos(np.radians(20)))), _fmt(float(np.sin(np.radians(20))))
    for f in folder.iterdir():  # slices tilted 20 degrees, positions still step along z
        rewrite(f, ImageOrientationPatient=["1", "0", "0", "0", c20, f"-{s20}"])

    row("SLICE_GAP_TOO_LARGE", "ct", ct="far_gap")
    _, folder = series("far_gap")
    for i, f in enumerate(by_z(folder)[6:], start=6):  # two blocks of 6 slices, 100 mm apart
        rewrite(f, ImagePositionPatient=["-12", "-12", _fmt(i * 2.5 + 100.0)])

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
    _write_csv(df[["patient_id", "ct", "mri", "note", "label", "split"]], out / "manifest.csv")
    _write_csv(df, out / "expected.csv")
    return df

