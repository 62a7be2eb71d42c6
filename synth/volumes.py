"""Phantom volumes: a torso-like CT written as a DICOM series, a head-like MRI as NIfTI.

A CT finding is a bright sphere in soft tissue (low-contrast blobs are distractors); an MRI
finding a bright region (half the negatives get a dark one). Where each finding lies is
returned for truth.csv. Some CT series number their instances head to feet and some MRI
axes are stored flipped (affine negated to match), as real exports do.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.config import CT_ORIENTATION, HU_INTERCEPT, TISSUE_HU, SynthConfig
from synth.dicom_writer import write_dicom_series
from synth.people import Person, dicom_date


@dataclass
class CtGeometry:
    origin: tuple[float, float, float]  # LPS position of the lowest-z slice's first pixel
    pixel_spacing: float
    slice_spacing: float
    shape: tuple[int, int, int]  # (columns, rows, slices)
    reversed_z: bool


def ct_volume(
    cfg: SynthConfig, geo: CtGeometry, finding: bool, rng: np.random.Generator
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


def _token(rng: np.random.Generator) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, size=8, dtype=np.uint8))


def write_ct_series(
    folder: Path,
    vol: np.ndarray,
    geo: CtGeometry,
    p: Person,
    uids: dict[str, str],
    rng: np.random.Generator,
    modality: str = "CT",
    series_number: int = 2,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> list[Path]:
    """Write ``vol`` (x, y, z in HU) as ``p``'s series, one file per slice named by a token.

    The header carries ``p``'s fake PHI (recorded in ``p.written``). A non-CT ``modality``
    stores ``vol`` as is, without rescale attributes.
    """
    study_date = p.wrote("dicom_dates", dicom_date(p.visit))
    extra = {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": list(image_type),
        "StudyDate": study_date, "SeriesDate": study_date, "ContentDate": study_date,
        "StudyTime": "101500", "SeriesTime": "101500", "ContentTime": "101500",
        "AccessionNumber": "",
        "Manufacturer": "clinfuse-synth",
        "InstitutionName": p.wrote("institutions", p.institution),
        "ReferringPhysicianName": "",
        "PatientName": p.wrote("dicom_names", f"{p.last}^{p.first}"),
        "PatientID": p.wrote("mrns", p.mrn),
        "PatientBirthDate": p.wrote("birth_dates", dicom_date(p.dob)),
        "PatientSex": p.sex,
        "StudyID": "1",
        "SeriesNumber": series_number,
        "PositionReferenceIndicator": "",
    }
    if modality == "CT":
        extra.update(WindowCenter="40", WindowWidth="400")
    return write_dicom_series(
        folder,
        vol,
        pixel_spacing=(geo.pixel_spacing, geo.pixel_spacing),
        slice_spacing=geo.slice_spacing,
        orientation=CT_ORIENTATION,
        origin=geo.origin,
        modality=modality,
        study_uid=uids["study"],
        series_uid=uids["series"],
        frame_uid=uids["frame"],
        intercept=HU_INTERCEPT if modality == "CT" else 0.0,
        reverse_instances=geo.reversed_z,
        file_name=lambda _inst: f"{_token(rng)}.dcm",  # drawn in instance order
        extra=extra,
    )


def series_uids(seed: int, key: str, series: str = "ct") -> dict[str, str]:
    """Deterministic Study/Series/Frame UIDs from (seed, patient key, series name)."""
    from pydicom.uid import generate_uid

    base = [f"clinfuse-synth:{seed}", key]
    return {
        "study": generate_uid(entropy_srcs=[*base, "study"]),
        "series": generate_uid(entropy_srcs=[*base, series, "series"]),
        "frame": generate_uid(entropy_srcs=[*base, series, "frame"]),
    }


# --------------------------------------------------------------------------- MRI (NIfTI)


def mri_volume(
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


def write_nifti(
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


