"""Geometry of a DICOM series and of any volume: header checks, slice order, tilt, resampling.

``modalities.dicom`` reads headers and decodes pixels; everything that decides *where* the
voxels lie lives here and works from header values only, before any pixel is decoded:

- ``check_headers``: allowed Modality, single-frame, enough slices, sane PixelSpacing and
  ImageOrientationPatient (unit-length, orthogonal cosines), the same on every slice;
- ``series_geometry``: slices sorted along the normal, gaps checked against the median
  (missing slices, duplicates, disjoint ranges rejected; uneven gaps resampled on request),
  in-plane drift (gantry tilt) rejected or measured for de-shearing, the RAS affine;
- ``apply_tilt_policy``: the same tilt rule for a NIfTI volume's sheared affine.

``Volume``, ``check_spacing`` and ``check_voxel_count`` serve NIfTI input too
(``modalities.volume``). Messages carry geometry numbers only, never header text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modalities.errors import InputRejected, ReasonCode

# Direction cosines from different slices of one series agree to ~1e-6 in practice; 1e-3
# (~0.06 degrees) tolerates rounding in the DS strings but not a re-oriented acquisition.
ORIENTATION_TOLERANCE = 1e-3
# Relative tolerance when comparing PixelSpacing between slices.
PIXEL_SPACING_RTOL = 1e-3
# Row/column cosines must be unit length and orthogonal to this (absolute) tolerance: DS
# strings with 4+ significant digits are well inside it; 2\0\0 or cosines 60 degrees apart
# (a corrupt or hand-edited header) are far outside.
COSINE_TOLERANCE = 5e-3
# In-plane drift of the slices (over the whole series, in voxels) above which the series
# counts as gantry-tilted (sheared). Below it, ignoring the shear moves nothing by more than
# this fraction of a voxel.
TILT_TOLERANCE_VOXELS = 0.1
# Uneven gaps are only interpolated across when no gap exceeds this many median gaps:
# across a wider gap, "resampling" would invent most of the output (CT2: 161 of 165 slices).
MAX_RESAMPLE_GAP = 3.0
# Largest volume read (voxels); a float32 stack of 2**30 voxels is 4 GiB. A header that
# declares more (Rows = Columns = 65535) is rejected before anything is allocated.
MAX_VOXELS = 1 << 30

SpacingPolicy = Literal["reject", "resample"]
TiltPolicy = Literal["reject", "deshear"]


@dataclass
class Volume:
    """A scalar 3D image: ``array`` (X, Y, Z) float32 and ``affine`` voxel index -> RAS+ mm.

    Axis order follows NIfTI/nibabel: i = DICOM column, j = DICOM row, k = slice. The array
    is usually Fortran-ordered (each slice contiguous), as nibabel returns it.
    """

    array: np.ndarray
    affine: np.ndarray
    # How the volume was read (geometry numbers only, never header text): e.g.
    # ``{"tilt_degrees": 20.0, "desheared": True}``. Stored with the cache entry.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (norms of the affine's columns)."""
        s = np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


@dataclass
class SliceHeader:
    """What the reader needs from one file's header (no pixel data)."""

    path: Path
    series_uid: str
    modality: str
    rows: int
    columns: int
    frames: int
    pixel_spacing: tuple[float, float] | None
    orientation: np.ndarray | None  # (6,) row then column direction cosines
    position: np.ndarray | None  # (3,) ImagePositionPatient, LPS mm
    thickness: float | None  # SpacingBetweenSlices, else SliceThickness


def check_spacing(spacing: Sequence[float], what: str) -> None:
    """Voxel sizes must be finite and > 0: 0 makes the affine singular, < 0 mirrors the image."""
    sp = np.asarray(spacing, dtype=np.float64)
    if not np.isfinite(sp).all() or (sp <= 0).any():
        shown = ", ".join(f"{v:.4g}" for v in sp)
        raise InputRejected(
            ReasonCode.INVALID_SPACING,
            f"{what} is ({shown}) mm but must be finite and greater than 0; the header is "
            "corrupt or was edited: re-export the series from the scanner or PACS",
        )


def _check_slice_geometry(h: SliceHeader) -> None:
    """PixelSpacing > 0 and finite; row/column cosines unit-length, orthogonal; IPP finite."""
    assert h.pixel_spacing is not None and h.orientation is not None and h.position is not None
    check_spacing(h.pixel_spacing, "PixelSpacing")
    row, col = h.orientation[:3], h.orientation[3:]
    if not np.isfinite(h.orientation).all():
        problem = "is not six numbers"
    else:
        norms = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
        cos = float(row @ col) / max(norms[0] * norms[1], 1e-12)
        problem = ""
        if max(abs(norms[0] - 1.0), abs(norms[1] - 1.0)) > COSINE_TOLERANCE:
            problem = f"has row/column cosines of length {norms[0]:.3g} and {norms[1]:.3g}, not 1"
        elif abs(cos) > COSINE_TOLERANCE:
            angle = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
            problem = f"has row and column directions {angle:.1f} degrees apart, not 90"
    if problem:
        raise InputRejected(
            ReasonCode.INVALID_ORIENTATION,
            f"ImageOrientationPatient {problem}, so the slices cannot be placed in space; "
            "the header is corrupt or was edited: re-export the series",
        )
    if not np.isfinite(h.position).all():
        raise InputRejected(
            ReasonCode.INVALID_ORIENTATION,
            "ImagePositionPatient is not three finite numbers; re-export the series",
        )


def check_voxel_count(shape: Sequence[int], max_voxels: int) -> None:
    """Refuse to allocate a volume larger than ``max_voxels`` (checked from headers)."""
    n = int(np.prod([int(v) for v in shape], dtype=np.float64))
    if n > max_voxels:
        dims = " x ".join(str(int(v)) for v in shape)
        raise InputRejected(
            ReasonCode.VOLUME_TOO_LARGE,
            f"the header declares {dims} = {n} voxels, more than the limit of {max_voxels} "
            "(spec.max_voxels); the header is corrupt, or downsample the volume before ingest",
        )


def check_headers(
    headers: list[SliceHeader], modalities: Sequence[str] | None, min_slices: int
) -> None:
    """Reject a series whose headers cannot make one volume: wrong Modality, multi-frame,
    too few slices, slices without position/orientation/spacing, or slices that disagree."""
    allowed = {m.upper() for m in modalities or ()}
    if allowed:
        found = {h.modality for h in headers}
        if not found <= allowed:
            # The modality is a coded value (CT, MR, ...), not PHI; it tells the user what to do.
            got = ", ".join(sorted(m or "<none>" for m in found))
            raise InputRejected(
                ReasonCode.WRONG_MODALITY,
                f"DICOM Modality is {got} but this input expects {', '.join(sorted(allowed))}; "
                "check the manifest column",
            )
    if any(h.frames != 1 for h in headers):
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            "multi-frame DICOM is not supported; convert the series to NIfTI (e.g. dcm2niix)",
        )
    if len(headers) < min_slices:
        raise InputRejected(
            ReasonCode.TOO_FEW_SLICES,
            f"series has {len(headers)} slice(s), at least {min_slices} are needed; check "
            "that the whole series was exported, or lower min_slices in the spec",
        )
    missing = [
        name
        for name, ok in (
            ("ImageOrientationPatient", all(h.orientation is not None for h in headers)),
            ("ImagePositionPatient", all(h.position is not None for h in headers)),
            ("PixelSpacing", all(h.pixel_spacing is not None for h in headers)),
        )
        if not ok
    ]
    if missing:
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            f"slices lack {', '.join(missing)}, so they cannot be placed in space; "
            "export the original images, not secondary captures",
        )
    for h in headers:
        _check_slice_geometry(h)
    ref = headers[0]
    for h in headers[1:]:
        if not np.allclose(h.orientation, ref.orientation, atol=ORIENTATION_TOLERANCE):
            raise InputRejected(
                ReasonCode.INCONSISTENT_ORIENTATION,
                "slices of the series have different ImageOrientationPatient; the folder "
                "mixes acquisitions: split it into one folder per orientation",
            )
    for h in headers[1:]:
        if (h.rows, h.columns) != (ref.rows, ref.columns) or not np.allclose(
            h.pixel_spacing, ref.pixel_spacing, rtol=PIXEL_SPACING_RTOL
        ):
            raise InputRejected(
                ReasonCode.INCONSISTENT_SHAPE,
                "slices of the series differ in Rows/Columns or PixelSpacing; the folder "
                "mixes acquisitions: split it",
            )


@dataclass
class SeriesGeometry:
    """Sorted slices and where the output slices lie (positions along the slice normal)."""

    order: list[SliceHeader]
    positions: np.ndarray  # (n,) sorted, mm along the normal
    targets: np.ndarray | None  # (m,) uniform output positions when resampling, else None
    affine: np.ndarray  # 4x4 voxel -> RAS
    # (n, 2) in-plane offset of each slice's origin from the first slice's, in voxels along
    # i (columns) and j (rows), when the slices drift in-plane (gantry tilt); else None.
    drift: np.ndarray | None = None
    tilt_degrees: float = 0.0


def _slice_step(gaps: np.ndarray, n: int, tol: float) -> tuple[float, bool]:
    """Check slice gaps; returns (median gap, needs_resampling)."""
    median = float(np.median(gaps))
    if median <= 1e-3 or np.any(gaps <= max(1e-3, tol * median)):
        raise InputRejected(
            ReasonCode.INCONSISTENT_SPACING,
            "two or more slices share the same position (duplicates); remove duplicate "
            "files or split the folder",
        )
    uneven = False
    for g in gaps:
        ratio = g / median
        if abs(ratio - 1.0) <= tol:
            continue
        k = round(ratio)
        # A gap of k gaps means k-1 slices are missing. When more slices would be missing
        # than are present, the series is not "incomplete" but covers disjoint ranges.
        if k >= 2 and abs(ratio - k) <= tol * k and k - 1 <= n:
            raise InputRejected(
                ReasonCode.MISSING_SLICES,
                f"{k - 1} slice(s) missing inside the series (a gap of {k} slice "
                "intervals); re-export the complete series",
            )
        if ratio > MAX_RESAMPLE_GAP:
            # Refused whatever on_inconsistent_spacing says: interpolating across it would
            # make up most of the output.
            raise InputRejected(
                ReasonCode.SLICE_GAP_TOO_LARGE,
                f"one gap between slices is {g:.4g} mm, {ratio:.0f} times the usual "
                f"{median:.4g} mm, beside {n} slices: the files cover separate ranges (two "
                "scans, or most slices lost); resampling would invent the gap, so it is not "
                "done: re-export the complete series or split it",
            )
        uneven = True
    return median, uneven


def series_geometry(
    headers: list[SliceHeader],
    tol: float,
    on_inconsistent: SpacingPolicy,
    on_tilt: TiltPolicy,
) -> SeriesGeometry:
    """Sort checked slices along their normal and work out the output grid and affine.

    Gaps are compared with the median (``tol`` relative); uneven ones are resampled or
    rejected by ``on_inconsistent``, in-plane drift by ``on_tilt`` (see ``check_headers``).
    """
    ref = headers[0]
    assert ref.orientation is not None and ref.pixel_spacing is not None
    # Unit length within COSINE_TOLERANCE was checked; normalise away the DS rounding.
    row_dir = ref.orientation[:3] / np.linalg.norm(ref.orientation[:3])
    col_dir = ref.orientation[3:] / np.linalg.norm(ref.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    pos = np.array([float(h.position @ normal) for h in headers])  # type: ignore[operator]
    idx = np.argsort(pos, kind="stable")
    order = [headers[i] for i in idx]
    pos = pos[idx]
    first = order[0].position
    assert first is not None
    col_spacing, row_spacing = ref.pixel_spacing[1], ref.pixel_spacing[0]

    # In-plane drift of each slice origin (gantry tilt): the offset from the first slice that
    # is not along the normal, in voxels along i (row direction) and j (column direction).
    rel = np.stack([h.position - first for h in order])  # type: ignore[operator]
    inplane = rel - np.outer(rel @ normal, normal)
    drift = np.stack([inplane @ row_dir / col_spacing, inplane @ col_dir / row_spacing], axis=1)
    tilted = len(order) > 1 and float(np.abs(drift).max()) > TILT_TOLERANCE_VOXELS
    tilt_deg = 0.0
    if tilted:
        extent = float(pos[-1] - pos[0])
        tilt_deg = float(np.degrees(np.arctan2(np.linalg.norm(inplane[-1]), max(extent, 1e-9))))
        if on_tilt != "deshear":
            raise InputRejected(
                ReasonCode.GANTRY_TILT,
                f"the slices are sheared: each is shifted in-plane from the last (gantry tilt "
                f"of about {tilt_deg:.1f} degrees; {float(np.abs(drift).max()):.1f} voxels over "
                "the series); set on_gantry_tilt: deshear in the spec to resample it onto a "
                "rectangular grid, or convert with dcm2niix (its _Tilt output)",
            )

    targets = None
    if len(order) == 1:
        if ref.thickness is None:
            raise InputRejected(
                ReasonCode.INCONSISTENT_SPACING,
                "a single-slice image needs SliceThickness or SpacingBetweenSlices to give "
                "it a depth; export with those attributes",
            )
        step = normal * ref.thickness
    else:
        gaps = np.diff(pos)
        median, uneven = _slice_step(gaps, len(order), tol)
        last = order[-1].position
        assert last is not None
        if uneven:
            if on_inconsistent != "resample":
                raise InputRejected(
                    ReasonCode.INCONSISTENT_SPACING,
                    f"slice gaps range from {gaps.min():.3g} to {gaps.max():.3g} mm (more than "
                    f"{tol:.0%} apart); set on_inconsistent_spacing='resample' in the spec to "
                    "interpolate onto a uniform grid, or re-export the series",
                )
            m = round((pos[-1] - pos[0]) / median) + 1
            targets = np.linspace(pos[0], pos[-1], m)
            step = (last - first) / (m - 1)
        else:
            step = (last - first) / (len(order) - 1)
        if tilted:
            # De-sheared output: slices stacked straight along the normal.
            step = normal * float(step @ normal)

    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i runs along a row: column spacing
    lps[:3, 1] = col_dir * row_spacing  # j runs down a column: row spacing
    lps[:3, 2] = step
    lps[:3, 3] = first
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM patient space is LPS
    return SeriesGeometry(
        order=order,
        positions=pos,
        targets=targets,
        affine=ras,
        drift=drift if tilted else None,
        tilt_degrees=tilt_deg,
    )


def shift_slices(stack: np.ndarray, shifts: np.ndarray) -> None:
    """Translate slice k of ``stack`` (X, Y, Z) by ``shifts[k]`` voxels, in place.

    Bilinear interpolation (what dcm2niix uses to de-shear); voxels shifted in from outside
    the field of view take the volume's minimum (air for CT). out[x] = in[x - shift].
    """
    from scipy.ndimage import shift as nd_shift

    fill = float(stack.min()) if stack.size else 0.0
    for k in range(stack.shape[2]):
        sx, sy = float(shifts[k][0]), float(shifts[k][1])
        if abs(sx) < 1e-6 and abs(sy) < 1e-6:
            continue
        sl = np.ascontiguousarray(stack[:, :, k])
        stack[:, :, k] = nd_shift(sl, (sx, sy), order=1, mode="constant", cval=fill)


def affine_shear(affine: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Shear of an affine's slice (k) axis: (per-slice shift in voxels along i, j), degrees,
    and the k spacing along the in-plane normal. Assumes the i and j axes are orthogonal."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    ci, cj, ck = a[:, 0], a[:, 1], a[:, 2]
    si, sj = float(np.linalg.norm(ci)), float(np.linalg.norm(cj))
    ui, uj = ci / si, cj / sj
    n = np.cross(ui, uj)
    n /= np.linalg.norm(n)
    along = float(ck @ n)
    inplane = ck - along * n
    shift = np.array([float(inplane @ ui) / si, float(inplane @ uj) / sj])
    deg = float(np.degrees(np.arctan2(np.linalg.norm(inplane), abs(along))))
    return shift, deg, along


def apply_tilt_policy(vol: Volume, on_tilt: TiltPolicy) -> Volume:
    """Reject (GANTRY_TILT) or de-shear a volume whose slice axis is not normal to its slices.

    A sheared affine maps voxels to the right places, but every consumer that resamples or
    reorients onto a rectangular grid (MONAI's Resize/Orientation, the cache, overlays)
    silently drops the shear. De-shearing shifts slice k by k times the per-slice in-plane
    offset (sub-voxel, bilinear) so the slice axis becomes the normal: the dcm2niix method.
    """
    nz = vol.array.shape[2]
    shift, deg, along = affine_shear(vol.affine)
    drift = float(np.abs(shift).max()) * max(nz - 1, 0)
    if drift <= TILT_TOLERANCE_VOXELS:
        return vol
    if on_tilt != "deshear":
        raise InputRejected(
            ReasonCode.GANTRY_TILT,
            f"the slice axis is sheared {deg:.1f} degrees from the slice normal (gantry tilt; "
            f"{drift:.1f} voxels over the volume); set on_gantry_tilt: deshear in the spec to "
            "resample it onto a rectangular grid, or convert with dcm2niix (its _Tilt output)",
        )
    array = np.array(vol.array, dtype=np.float32, order="F", copy=True)
    shift_slices(array, np.outer(np.arange(nz), shift))
    affine = np.array(vol.affine, dtype=np.float64, copy=True)
    a = affine[:3, :3]
    n = np.cross(a[:, 0], a[:, 1])
    affine[:3, 2] = n / np.linalg.norm(n) * along
    meta = {**vol.meta, "tilt_degrees": round(deg, 3), "desheared": True}
    return Volume(array=array, affine=affine, meta=meta)


def resample_z(stack: np.ndarray, pos: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Linearly interpolate slices at their true positions ``pos`` onto ``targets``."""
    hi = np.clip(np.searchsorted(pos, targets, side="right"), 1, len(pos) - 1)
    lo = hi - 1
    w = ((targets - pos[lo]) / (pos[hi] - pos[lo])).clip(0.0, 1.0).astype(np.float32)
    out = np.empty((*stack.shape[:2], len(targets)), dtype=np.float32, order="F")
    for k in range(len(targets)):
        a, b = stack[:, :, lo[k]], stack[:, :, hi[k]]
        out[:, :, k] = a + w[k] * (b - a)
    return out
