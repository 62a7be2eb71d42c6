"""A corpus of malformed and unusual inputs that must each end in exactly one place.

Built from the files pydicom and nibabel ship plus series generated here with pydicom and
nibabel directly (not ``synth.dicom_writer``, so a bug in clinfuse's own writer cannot hide
one in the reader). Every input has an expected outcome: accepted, or quarantined with one
exact reason code. The corpus is ingested in-process (fast, exact per-input codes) and once
through the real CLI (``python -m workflows.cli ingest``), which must exit 0.

Slices are 16 x 16 so the whole corpus builds and ingests in seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from modalities.cohort import CohortConfig
from modalities.ingest import ingest_manifest

PHI = {"PatientName": "Corpus^Canary", "PatientID": "MRN-CANARY-77", "PatientBirthDate": "19450203"}
PYDICOM_DATA = Path(get_testdata_file("CT_small.dcm")).parent
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
N = 16  # rows = columns of generated slices
COS20, SIN20 = float(np.cos(np.radians(20))), float(np.sin(np.radians(20)))

# Four columns, each a CT/MRI modality with its own policy (see CONFIG below).
CT, MRI, DESHEAR, RESAMPLE = "ct", "mri", "ct_deshear", "ct_resample"
SPEC = {"spacing": [4.0, 4.0, 4.0], "size": [8, 8, 8]}
COHORT = {
    "modalities": {
        CT: {"spec": {**SPEC, "min_slices": 8}, "encoder": {"name": "tiny"}},
        MRI: {"spec": {**SPEC, "min_slices": 1}, "encoder": {"name": "tiny"}},
        DESHEAR: {
            "type": "ct",
            "spec": {**SPEC, "min_slices": 8, "on_gantry_tilt": "deshear"},
            "encoder": {"name": "tiny"},
        },
        RESAMPLE: {
            "type": "ct",
            "spec": {**SPEC, "min_slices": 4, "on_inconsistent_spacing": "resample"},
            "encoder": {"name": "tiny"},
        },
    },
    "labels": ["label"],
}


# --- an independent DICOM writer -----------------------------------------------------------


def dicom_slice(
    pixels: np.ndarray,
    *,
    position: tuple[float, float, float],
    series_uid: str,
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    spacing: tuple[float, float] = (1.0, 1.0),
    modality: str = "CT",
    syntax: UID = ExplicitVRLittleEndian,
    number: int = 1,
) -> Dataset:
    """One single-frame slice; ``pixels`` is (rows, columns) int16."""
    sop = MRImageStorage if modality == "MR" else CTImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.Modality = modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", series_uid
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    return ds


def series(
    folder: Path,
    *,
    n: int = 8,
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    step: tuple[float, float, float] | None = None,
    zs: list[float] | None = None,
    modify: Callable[[int, Dataset], None] | None = None,
    syntax: UID = ExplicitVRLittleEndian,
    series_uid: str | None = None,
    name: str = "IM",
) -> list[Path]:
    """``n`` slices; slice k at ``origin + k * step`` (default: 2 mm along the normal)."""
    folder.mkdir(parents=True, exist_ok=True)
    r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(r, c)
    normal = normal / max(np.linalg.norm(normal), 1e-9)
    origin = np.array([-8.0, -8.0, -7.0])
    uid = series_uid or generate_uid()
    rng = np.random.default_rng(len(folder.name))
    paths = []
    for k in range(n):
        pos = (
            origin + k * np.asarray(step, float)
            if step is not None
            else origin + normal * (zs[k] if zs is not None else 2.0 * k)
        )
        px = rng.integers(0, 1400, (N, N)).astype(np.int16)
        ds = dicom_slice(
            px,
            position=tuple(pos),
            series_uid=uid,
            iop=iop,
            syntax=ExplicitVRLittleEndian if syntax == RLELossless else syntax,
            number=k + 1,
        )
        if modify is not None:
            modify(k, ds)
        if syntax == RLELossless:
            ds.compress(RLELossless)
        path = folder / f"{name}{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def set_attr(name: str, value, only: int | None = None) -> Callable[[int, Dataset], None]:
    def apply(k: int, ds: Dataset) -> None:
        if only is None or k == only:
            setattr(ds, name, value)

    return apply


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# --- NIfTI writers ---------------------------------------------------------------------------


def nifti(path: Path, data: np.ndarray, affine=None, qcode=1, scode=1, pixdim=None) -> Path:
    img = nib.Nifti1Image(np.asarray(data, np.float32), None)
    aff = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else np.asarray(affine, float)
    plain = np.diag([2.0, 2.0, 2.0, 1.0])  # nibabel cannot store a singular/sheared qform
    img.header.set_qform(aff if qcode > 0 else plain, code=qcode)
    img.header.set_sform(aff, code=scode)
    if pixdim is not None:
        img.header["pixdim"][1:4] = pixdim
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))
    return path


def vol(shape=(N, N, 12)) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 100, shape).astype(np.float32)


# --- the corpus ------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    column: str
    build: Callable[[Path], Path | str]  # returns the manifest path (file, folder, folder#uid)
    expected: str | None  # reason code, or None = accepted


def _copy(name: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        d.mkdir(parents=True)
        return Path(shutil.copy(get_testdata_file(name), d / name))

    return build


def _nib_copy(name: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        d.mkdir(parents=True)
        return Path(shutil.copy(NIB_DATA / name, d / name))

    return build


def _copy_dir(rel: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        shutil.copytree(PYDICOM_DATA / rel, d)
        return d

    return build


def _series(**kw) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        series(d, **kw)
        return d

    return build


def _then(build: Callable[[Path], Path], after: Callable[[Path], None]) -> Callable[[Path], Path]:
    def run(d: Path) -> Path:
        out = build(d)
        after(d)
        return out

    return run


def _truncate_header_of_slice(d: Path) -> None:
    cut(sorted(d.glob("*.dcm"))[3], 600)  # inside the dataset, before Rows/PixelData


def _truncate_pixels_of_slice(d: Path) -> None:
    p = sorted(d.glob("*.dcm"))[2]
    cut(p, p.stat().st_size - 40)


def _single_header_cut(d: Path) -> Path:
    p = series(d, n=1)[0]
    cut(p, 600)
    return p


def _zero_byte(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "empty.dcm").write_bytes(b"")
    return d / "empty.dcm"


def _zero_in_series(d: Path) -> None:
    (d / "IM0009.dcm").write_bytes(b"")


def _huge_declared(d: Path) -> Path:
    def mod(k: int, ds: Dataset) -> None:
        ds.Rows = ds.Columns = 65535  # pixel data stays 512 bytes

    series(d, modify=mod)
    return d


def _huge_compressed(d: Path) -> Path:
    paths = series(d, syntax=RLELossless)
    for p in paths:  # the RLE stream is small; the header now claims 65535 x 65535
        ds = dcmread(p)
        ds.Rows = ds.Columns = 65535
        ds.save_as(p, enforce_file_format=True)
    return d


def _mixed_series(d: Path) -> Path:
    series(d / "a")
    series(d / "b", name="B")
    return d


def _selected_series(d: Path) -> str:
    uid = "1.2.826.0.1.3680043.8.498.77"
    series(d / "a", series_uid=uid)
    series(d / "b", name="B")
    return f"{d}#{uid}"


def _localizer_in_series(d: Path) -> Path:
    uid = generate_uid()
    series(d, series_uid=uid)
    series(d, n=1, iop=(0, 1, 0, 0, 0, -1), series_uid=uid, name="LOC")
    return d


def _localizer_alone(d: Path) -> Path:
    series(d, n=1, iop=(0, 1, 0, 0, 0, -1), name="LOC")
    return d


def _non_finite(d: Path) -> Path:
    series(d, modify=set_attr("RescaleSlope", "1e400", only=4))  # overflows float32 to inf
    return d


def _reversed_names(d: Path) -> Path:
    paths = series(d)
    for i, p in enumerate(paths):
        p.rename(d / f"Z{len(paths) - i:04d}.dcm")
    return d


def _jpeg2000(d: Path) -> Path:
    return _copy("MR_small_jp2klossless.dcm")(d)


def _nifti_5d(d: Path) -> Path:
    return nifti(d / "v.nii.gz", np.zeros((N, N, N, 1, 3), np.float32))


def _nifti_nan(d: Path) -> Path:
    data = vol()
    data[3, 4, 5] = np.nan
    return nifti(d / "v.nii.gz", data)


def _nifti_cut(suffix: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        p = nifti(d / f"v{suffix}", vol((32, 32, 32)))
        cut(p, p.stat().st_size // 2)
        return p

    return build


def _nifti_huge(d: Path) -> Path:  # 64 bytes of data, 3.5e13 voxels declared
    p = nifti(d / "v.nii", vol((4, 4, 4)))
    hdr = nib.load(str(p)).header.copy()
    hdr.set_data_shape((32767, 32767, 32767))  # int16 dims: the largest NIfTI-1 allows
    raw = bytearray(p.read_bytes())
    raw[:348] = hdr.binaryblock
    p.write_bytes(bytes(raw))
    return p


def _nifti_garbage(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "v.nii.gz").write_bytes(gzip.compress(os.urandom(200)))
    return d / "v.nii.gz"


def _nifti_zero(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "v.nii").write_bytes(b"")
    return d / "v.nii"


SHEAR = np.array([[2.0, 0, 0, 0], [0, 2 * COS20, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
SHEAR[1, 2] = 2.0 * np.tan(np.radians(20))  # the slice axis leans 20 degrees towards A


def corpus() -> list[Case]:
    j2k = get_decoder(JPEG2000Lossless).is_available
    jls = get_decoder(JPEGLSLossless).is_available
    tilt = {"iop": (1, 0, 0, 0, COS20, -SIN20), "step": (0.0, 0.0, 2.0)}
    cases = [
        # valid, some unusual: must be accepted
        Case("axial", CT, _series(), None),
        Case("prone", CT, _series(iop=(-1, 0, 0, 0, -1, 0)), None),
        Case("oblique_20deg", CT, _series(iop=(1, 0, 0, 0, COS20, SIN20)), None),
        Case("coronal", CT, _series(iop=(1, 0, 0, 0, 0, -1)), None),
        Case("sagittal", CT, _series(iop=(0, 1, 0, 0, 0, -1)), None),
        Case("file_names_reversed", CT, _reversed_names, None),
        Case(
            "float_rescale",
            CT,
            _series(
                modify=lambda k, ds: (
                    setattr(ds, "RescaleSlope", 0.37),
                    setattr(ds, "RescaleIntercept", -1000.25),
                )
            ),
            None,
        ),
        Case("implicit_vr_series", CT, _series(syntax=ImplicitVRLittleEndian), None),
        Case("deflated_series", CT, _series(syntax=DeflatedExplicitVRLittleEndian), None),
        Case("rle_series", CT, _series(syntax=RLELossless), None),
        Case("selected_series", CT, _selected_series, None),
        Case("gantry_tilt_desheared", DESHEAR, _series(**tilt), None),
        Case("uneven_gap_resampled", RESAMPLE, _series(zs=[0, 2, 4, 6, 8, 10.5, 12.5, 14.5]), None),
        Case("pydicom_CT5N_real_series", RESAMPLE, _copy_dir("dicomdirtests/98892001/CT5N"), None),
        Case("pydicom_MR_small", MRI, _copy("MR_small.dcm"), None),
        Case("pydicom_big_endian", MRI, _copy("MR_small_bigendian.dcm"), None),
        Case("pydicom_implicit_vr", MRI, _copy("MR_small_implicit.dcm"), None),
        Case("pydicom_rle", MRI, _copy("MR_small_RLE.dcm"), None),
        Case("pydicom_jpeg2000", MRI, _jpeg2000, None if j2k else "CODEC_UNAVAILABLE"),
        Case(
            "pydicom_jpeg_ls",
            MRI,
            _copy("MR_small_jpeg_ls_lossless.dcm"),
            None if jls else "CODEC_UNAVAILABLE",
        ),
        Case("nibabel_anatomical", CT, _nib_copy("anatomical.nii"), None),
        Case("nifti_qform_only", CT, lambda d: nifti(d / "v.nii.gz", vol(), scode=0), None),
        Case("nifti_sform_only", CT, lambda d: nifti(d / "v.nii.gz", vol(), qcode=0), None),
        Case(
            "nifti_sheared_desheared",
            DESHEAR,
            lambda d: nifti(d / "v.nii.gz", vol(), affine=SHEAR, qcode=0),
            None,
        ),
        # geometry of the header
        Case("gantry_tilt_20deg", CT, _series(**tilt), "GANTRY_TILT"),
        Case(
            "nifti_sheared",
            CT,
            lambda d: nifti(d / "v.nii.gz", vol(), affine=SHEAR, qcode=0),
            "GANTRY_TILT",
        ),
        Case(
            "pixel_spacing_zero",
            CT,
            _series(modify=set_attr("PixelSpacing", [0.0, 0.0])),
            "INVALID_SPACING",
        ),
        Case(
            "pixel_spacing_negative",
            CT,
            _series(modify=set_attr("PixelSpacing", [-1.0, -1.0])),
            "INVALID_SPACING",
        ),
        Case(
            "pixel_spacing_nan",
            CT,
            _series(modify=set_attr("PixelSpacing", ["nan", "nan"])),
            "INVALID_SPACING",
        ),
        Case("iop_not_unit", CT, _series(iop=(2, 0, 0, 0, 2, 0)), "INVALID_ORIENTATION"),
        Case(
            "iop_60deg_apart",
            CT,
            _series(iop=(1, 0, 0, 0.5, float(np.sqrt(0.75)), 0)),
            "INVALID_ORIENTATION",
        ),
        Case(
            "iop_row_equals_column",
            CT,
            _series(iop=(1, 0, 0, 1, 0, 0), step=(0, 0, 2.0)),
            "INVALID_ORIENTATION",
        ),
        Case(
            "no_position",
            CT,
            _series(modify=lambda k, ds: delattr(ds, "ImagePositionPatient")),
            "UNSUPPORTED_FORMAT",
        ),
        Case(
            "nifti_one_slice",
            CT,
            lambda d: nifti(d / "v.nii.gz", vol((48, 48, 1))),
            "TOO_FEW_SLICES",
        ),
        Case("nifti_2d", CT, lambda d: nifti(d / "v.nii.gz", vol((N, N))), "TOO_FEW_SLICES"),
        Case("nifti_5d", CT, _nifti_5d, "UNSUPPORTED_FORMAT"),
        Case("nibabel_example4d", CT, _nib_copy("example4d.nii.gz"), "UNSUPPORTED_FORMAT"),
        Case(
            "nifti_qform_pixdim_zero",
            CT,
            lambda d: nifti(d / "v.nii.gz", vol(), scode=0, pixdim=0.0),
            "INVALID_SPACING",
        ),
        Case(
            "nifti_qform_pixdim_negative",
            CT,
            lambda d: nifti(d / "v.nii.gz", vol(), scode=0, pixdim=-2.0),
            "INVALID_SPACING",
        ),
        Case(
            "nifti_no_qform_no_sform",
            CT,
            lambda d: nifti(d / "v.nii.gz", vol(), qcode=0, scode=0),
            "INVALID_ORIENTATION",
        ),
        Case(
            "nifti_sform_singular",
            CT,
            lambda d: nifti(d / "v.nii.gz", vol(), qcode=0, affine=np.diag([2.0, 0, 2, 1])),
            "INVALID_SPACING",
        ),
        Case(
            "nifti_sform_axes_parallel",
            CT,
            lambda d: nifti(
                d / "v.nii.gz",
                vol(),
                qcode=0,
                affine=np.array([[2.0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]),
            ),
            "INVALID_ORIENTATION",
        ),
        # slices and series
        Case(
            "missing_slice", CT, _series(n=9, zs=[0, 2, 4, 6, 10, 12, 14, 16, 18]), "MISSING_SLICES"
        ),
        Case(
            "uneven_gap", CT, _series(zs=[0, 2, 4, 6, 8, 10.5, 12.5, 14.5]), "INCONSISTENT_SPACING"
        ),
        Case(
            "duplicate_positions",
            CT,
            _series(n=9, zs=[0, 2, 4, 6, 6, 8, 10, 12, 14]),
            "INCONSISTENT_SPACING",
        ),
        Case("pydicom_CT2_gap", CT, _copy_dir("dicomdirtests/77654033/CT2"), "TOO_FEW_SLICES"),
        Case(
            "pydicom_CT2_gap_resample",
            RESAMPLE,
            _copy_dir("dicomdirtests/77654033/CT2"),
            "SLICE_GAP_TOO_LARGE",
        ),
        Case(
            "gap_of_disjoint_ranges",
            RESAMPLE,
            _series(zs=[0, 2, 4, 6, 60, 62, 64, 66]),
            "SLICE_GAP_TOO_LARGE",
        ),
        Case("mixed_series", CT, _mixed_series, "MULTIPLE_SERIES"),
        Case("localizer_in_series", CT, _localizer_in_series, "INCONSISTENT_ORIENTATION"),
        Case("localizer_alone", CT, _localizer_alone, "TOO_FEW_SLICES"),
        Case(
            "pixel_spacing_differs",
            CT,
            _series(modify=set_attr("PixelSpacing", [0.9, 0.9], only=5)),
            "INCONSISTENT_SHAPE",
        ),
        Case("wrong_modality", CT, _series(modify=set_attr("Modality", "MR")), "WRONG_MODALITY"),
        Case("pydicom_CT_small_single", CT, _copy("CT_small.dcm"), "TOO_FEW_SLICES"),
        # bytes: truncation, sizes, non-finite values
        Case(
            "slice_header_truncated",
            CT,
            _then(_series(), _truncate_header_of_slice),
            "TRUNCATED_FILE",
        ),
        Case(
            "slice_pixels_truncated",
            CT,
            _then(_series(), _truncate_pixels_of_slice),
            "TRUNCATED_FILE",
        ),
        Case("single_file_header_truncated", MRI, _single_header_cut, "TRUNCATED_FILE"),
        Case("zero_byte_file", MRI, _zero_byte, "TRUNCATED_FILE"),
        Case("zero_byte_file_in_series", CT, _then(_series(), _zero_in_series), "TRUNCATED_FILE"),
        Case("pydicom_MR_truncated", MRI, _copy("MR_truncated.dcm"), "TRUNCATED_FILE"),
        Case("pydicom_rtplan_truncated", MRI, _copy("rtplan_truncated.dcm"), "TRUNCATED_FILE"),
        Case("rows_columns_65535", CT, _huge_declared, "TRUNCATED_FILE"),
        Case("rows_columns_65535_compressed", CT, _huge_compressed, "VOLUME_TOO_LARGE"),
        Case("nifti_dims_32767", CT, _nifti_huge, "VOLUME_TOO_LARGE"),
        Case("nifti_truncated", CT, _nifti_cut(".nii"), "TRUNCATED_FILE"),
        Case("nifti_gz_truncated", CT, _nifti_cut(".nii.gz"), "TRUNCATED_FILE"),
        Case("nifti_zero_byte", CT, _nifti_zero, "TRUNCATED_FILE"),
        Case("nifti_garbage", CT, _nifti_garbage, "UNREADABLE"),
        Case("non_finite_after_rescale", CT, _non_finite, "NON_FINITE_VALUES"),
        Case("nifti_nan_voxel", CT, _nifti_nan, "NON_FINITE_VALUES"),
        # not images / not DICOM
        Case("pydicom_structured_report", MRI, _copy("test-SR.dcm"), "UNSUPPORTED_FORMAT"),
        Case("pydicom_rtplan", MRI, _copy("rtplan.dcm"), "UNSUPPORTED_FORMAT"),
        Case("pydicom_ecg_waveform", MRI, _copy("waveform_ecg.dcm"), "UNSUPPORTED_FORMAT"),
        Case(
            "pydicom_meta_missing_tsyntax",
            MRI,
            _copy("meta_missing_tsyntax.dcm"),
            "UNSUPPORTED_FORMAT",
        ),
        Case("pydicom_no_meta", MRI, _copy("no_meta.dcm"), "NOT_DICOM"),
        Case("pydicom_bad_vr", MRI, _copy("badVR.dcm"), "UNREADABLE"),
        Case("missing_path", CT, lambda d: d / "nope", "MISSING_FILE"),
    ]
    return cases


@dataclass
class Built:
    root: Path
    manifest: Path
    cases: list[Case]
    config: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("corpus")
    cases = corpus()
    rows = []
    for i, case in enumerate(cases):
        ref = case.build(root / case.name)
        rel = str(ref).replace(str(root) + os.sep, "")
        # "note": the tiny recipe the CLI config extends also has a (here empty) note column.
        rows.append(
            {
                "patient_id": f"P{i:03d}",
                "label": "",
                "note": "",
                **{c: (rel if c == case.column else "") for c in COHORT["modalities"]},
            }
        )
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = root / "corpus.yaml"
    config.write_text(json.dumps({"base": "tiny", "cohort": COHORT}))  # JSON is YAML
    return Built(root, manifest, cases, config)


def _check_outcome(out: Path, b: Built, summary: dict) -> None:
    """Every input is in exactly one place, with the expected reason code."""
    cohort = pd.read_parquet(out / "cohort.parquet")
    q = pd.read_parquet(out / "quarantine.parquet")
    assert summary["inputs"] == len(b.cases)
    assert summary["accepted"] + summary["quarantined"] == summary["inputs"]
    assert len(q) == summary["quarantined"]
    got: dict[int, str | None] = {}
    for _, r in q.iterrows():
        row = int(r["source"].split("row ")[1].split(",")[0])
        assert row not in got, f"{b.cases[row].name} quarantined twice"
        got[row] = r["code"]
    wrong = []
    for i, case in enumerate(b.cases):
        if case.expected is None and i in got:
            wrong.append(f"{case.name}: expected accepted, got {got[i]}")
        elif case.expected is not None and got.get(i) != case.expected:
            wrong.append(f"{case.name}: expected {case.expected}, got {got.get(i)}")
    assert not wrong, "\n".join(wrong)
    accepted = {c for c in COHORT["modalities"]}
    n_ok = sum(int((cohort[f"{c}_status"] == "ok").sum()) for c in accepted)
    assert n_ok == summary["accepted"] == sum(c.expected is None for c in b.cases)
    # Messages carry no header values (PHI) and no paths or file names.
    text = " ".join(q["message"]) + " ".join(q["source"])
    names = ("IM000", "v.nii", "MR_small", "anatomical", "CT2", "corpus")
    for needle in (*PHI.values(), "Canary", str(b.root), *names):
        assert needle not in text, needle


def test_corpus_is_large_and_covers_every_new_code(built: Built) -> None:
    assert len(built.cases) >= 40
    codes = {c.expected for c in built.cases}
    for code in (
        "GANTRY_TILT",
        "INVALID_SPACING",
        "INVALID_ORIENTATION",
        "TRUNCATED_FILE",
        "SLICE_GAP_TOO_LARGE",
        "VOLUME_TOO_LARGE",
    ):
        assert code in codes
    assert len({c.name for c in built.cases}) == len(built.cases)


def test_corpus_in_process_exact_codes(built: Built, tmp_path: Path) -> None:
    cfg = CohortConfig.model_validate(
        {**COHORT, "modalities": {k: {**v} for k, v in COHORT["modalities"].items()}}
    )
    summary = ingest_manifest(built.manifest, cfg, built.root, tmp_path / "prepared")
    _check_outcome(tmp_path / "prepared", built, summary)
    # Every accepted volume's cache entry carries its affine (the output geometry).
    cohort = pd.read_parquet(tmp_path / "prepared" / "cohort.parquet")
    from modalities.cache import TensorCache

    cache = TensorCache(tmp_path / "prepared" / "cache")
    mods = cfg.build()  # cache folders are named by modality type (ct, mri)
    keys = [(mods[m].name, k) for m in mods for k in cohort[f"{m}_key"].dropna()]
    assert keys
    for m, key in keys:
        meta = cache.get_meta(m, key)
        assert meta is not None and np.asarray(meta["affine"]).shape == (4, 4)


@pytest.mark.slow
def test_corpus_through_the_cli(built: Built, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    out = tmp_path / "prepared"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflows.cli",
            "ingest",
            str(built.manifest),
            "--out",
            str(out),
            "--config",
            str(built.config),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    _check_outcome(out, built, json.loads(res.stdout))


def test_jpeg2000_decodes_to_the_uncompressed_pixels() -> None:
    """The corpus expects JPEG 2000 accepted only where a decoder is installed; check it."""
    if not get_decoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 decoder installed (corpus expects CODEC_UNAVAILABLE)")
    from modalities.mri import MRIModality

    mod = MRIModality({"min_slices": 1})
    j2k = mod.load(get_testdata_file("MR_small_jp2klossless.dcm"))
    raw = mod.load(get_testdata_file("MR_small.dcm"))
    np.testing.assert_array_equal(j2k.array, raw.array)
    np.testing.assert_allclose(j2k.affine, raw.affine)
