"""Reading one DICOM series into a validated ``Volume`` (float32 array + RAS affine).

MONAI's ``LoadImage`` is not used here: on a folder it silently averages uneven slice gaps
(see FACTS.md), so a series with a missing slice comes back with wrong geometry and no
warning. This reader validates the geometry itself, from headers only, before decoding any
pixel data:

1. headers of every file (pixel data skipped, not read); non-DICOM files in a folder are
   skipped; truncated files and pixel data shorter than Rows x Columns need are rejected
   here, before anything is allocated;
2. one series (or the one a ``SeriesRef`` selects), of an allowed DICOM Modality;
3. sane geometry (PixelSpacing > 0 and finite, ImageOrientationPatient unit-length and
   orthogonal), the same on every slice, and a bounded voxel count;
4. slices sorted along the slice normal; gaps compared to the median gap (missing slices,
   uneven or duplicate positions are rejected, or resampled onto a uniform grid on request;
   gaps wider than a few slices are never resampled); slices drifting in-plane (gantry tilt)
   are rejected or de-sheared, by policy;
5. pixel data decoded in a small thread pool, rescaled to float32 (HU for CT).

Error messages never contain header values, file names or paths (they can carry PHI); the
caller attaches a sanitized source reference with ``InputRejected.with_source``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error
from typing import Any, Literal

import numpy as np

from modalities.errors import InputRejected, ReasonCode
from modalities.paths import SeriesRef, source_files

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
DEFAULT_DECODE_WORKERS = 2
# Transfer syntaxes whose pixel data is stored raw: its length must equal what the image
# attributes need, so a mismatch is caught from the header. (Deflated is raw after inflation.)
_NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
}
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF

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
class _SliceHeader:
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


class _DropHeaderValueLogs(logging.Filter):
    """Drops pydicom's "Invalid value for VR" log records: they quote the header value (PHI)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Invalid value for VR" not in record.getMessage()


_QUIET = False


def quiet_dicom_logs() -> None:
    """Install, once, filters that keep header values and MONAI's codec noise out of logs.

    MONAI's PydicomReader logs "nvImageCodec is not available" on every call; pydicom logs
    invalid header values verbatim, which may be a name or a birth date.
    """
    global _QUIET
    if _QUIET:
        return
    logging.getLogger("pydicom").addFilter(_DropHeaderValueLogs())
    nv_filter = _MessageFilter("nvImageCodec is not available")
    for name in ("monai.data.nvimgcodec_pydicom_plugin", "monai.data.image_reader"):
        logging.getLogger(name).addFilter(nv_filter)
    # Warned once per reader: "not available" / "decoder plugin did not register".
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    _QUIET = True


class _MessageFilter(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """``value`` as ``n`` floats; None when absent; NaNs when present but malformed.

    Malformed values (wrong count, not numbers) become NaN so the geometry checks reject
    them with a specific code instead of treating them as absent.
    """
    if value is None or (not isinstance(value, (int, float)) and len(value) == 0):
        return None
    try:
        out = tuple(float(v) for v in (value if hasattr(value, "__len__") else [value]))
    except (TypeError, ValueError):
        return (float("nan"),) * n
    return out if len(out) == n else (float("nan"),) * n


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def _truncated(message: str) -> InputRejected:
    return InputRejected(
        ReasonCode.TRUNCATED_FILE,
        f"{message}; the file was cut short (interrupted copy or export): re-send the "
        "complete series",
    )


def _pixel_bytes_needed(ds: Any, rows: int, columns: int, frames: int) -> int:
    """Bytes of native pixel data that Rows x Columns x frames x samples x bits need."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    n = rows * columns * frames * samples
    return (n + 7) // 8 if bits == 1 else n * ((bits + 7) // 8)


def _check_lengths(ds: Any, path: Path, rows: int, columns: int, frames: int) -> None:
    """Reject a file that ends before its elements do, or whose pixel data is too short.

    pydicom reads a truncated file without complaint (a cut header just ends the dataset,
    a cut value comes back short), so the declared element lengths are compared with the
    file size here, from the header alone.
    """
    from pydicom.dataelem import RawDataElement

    syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    size = path.stat().st_size
    if len(ds) == 0:
        raise _truncated("a DICOM file holds no data elements after its file meta header")
    if syntax != _DEFLATED:  # offsets of a deflated file are in the inflated stream
        for tag in list(ds.keys()):
            el = ds.get_item(tag, keep_deferred=True)
            if (
                isinstance(el, RawDataElement)
                and el.length != _UNDEFINED_LENGTH
                and el.value_tell is not None
                and el.value_tell + el.length > size
            ):
                missing = el.value_tell + el.length - size
                raise _truncated(f"a DICOM file ends {missing} byte(s) before its last element")
    has_pixels = _PIXEL_DATA in ds
    sop = ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID")
    if not has_pixels and "Image Storage" in str(getattr(sop, "name", "")):
        raise _truncated("a DICOM image file ends before its pixel data")
    if has_pixels and rows > 0 and columns > 0 and syntax in _NATIVE_SYNTAXES:
        el = ds.get_item(_PIXEL_DATA, keep_deferred=True)
        length = getattr(el, "length", None)
        need = _pixel_bytes_needed(ds, rows, columns, frames)
        if length is not None and length != _UNDEFINED_LENGTH and length < need:
            raise _truncated(
                f"a slice's pixel data holds {length} bytes but its Rows x Columns x "
                f"BitsAllocated need {need} (or the image attributes are wrong)"
            )


def _read_header(path: Path) -> _SliceHeader | None:
    """Parse one file's header; None if it is not a DICOM Part-10 file.

    Files without the 128-byte preamble and "DICM" prefix (e.g. pydicom's ``no_meta.dcm``)
    count as not DICOM: reading them with ``force=True`` turns arbitrary files into garbage.
    An empty file, or one holding only part of the NUL preamble, is a truncated file.
    Large values (the pixel data) are skipped, not read: only their lengths are checked.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    size = path.stat().st_size
    if size < 132:
        # Empty, or only part of the 128-byte NUL preamble: a DICOM file cut short. Short
        # files with other content (a README, a text file named .dcm) are not DICOM.
        with path.open("rb") as fh:
            head = fh.read(132)
        if not head.strip(b"\0"):
            raise _truncated(f"a file is {size} bytes long")
    try:
        ds = dcmread(path, defer_size=4096)
    except InvalidDicomError:
        return None
    except (EOFError, struct_error):
        raise _truncated("a DICOM file ends inside its header") from None
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise InputRejected(
            ReasonCode.UNREADABLE,
            f"a DICOM file's header cannot be parsed ({type(exc).__name__}); re-export the "
            "series from the PACS or remove the damaged file",
        ) from None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError):
        raise InputRejected(
            ReasonCode.UNREADABLE,
            "a DICOM file has a malformed image attribute (NumberOfFrames, Rows or Columns "
            "is not an integer); re-export the series",
        ) from None
    try:
        _check_lengths(ds, path, rows, columns, frames)
    except (TypeError, ValueError):
        raise InputRejected(
            ReasonCode.UNREADABLE,
            "a DICOM file has a malformed image attribute (SamplesPerPixel or BitsAllocated "
            "is not an integer); re-export the series",
        ) from None
    thickness = _float(ds.get("SpacingBetweenSlices")) or _float(ds.get("SliceThickness"))
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    return _SliceHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        rows=rows,
        columns=columns,
        frames=frames,
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        orientation=None if iop is None else np.asarray(iop, dtype=np.float64),
        position=None if ipp is None else np.asarray(ipp, dtype=np.float64),
        thickness=thickness,
    )


def as_source(source: Path | str | SeriesRef) -> Path | SeriesRef:
    """A checked volume source: the file/folder exists, a ``#series`` selector is on a folder."""
    src = source if isinstance(source, SeriesRef) else Path(source)
    base = src.folder if isinstance(src, SeriesRef) else src
    if not base.exists():
        raise InputRejected(
            ReasonCode.MISSING_FILE, "file or folder does not exist; fix the manifest entry"
        )
    if isinstance(src, SeriesRef) and not base.is_dir():
        raise InputRejected(ReasonCode.UNSUPPORTED_FORMAT, "a '#series' selector needs a folder")
    return src


def read_series_headers(source: Path | str | SeriesRef) -> list[_SliceHeader]:
    """Headers of the image files of one series, unsorted and not yet geometry-checked.

    Raises NOT_DICOM (no DICOM file), UNSUPPORTED_FORMAT (DICOM but no image), or
    MULTIPLE_SERIES (several series and no selector).
    """
    quiet_dicom_logs()
    src = as_source(source)
    headers: list[_SliceHeader] = []
    with warnings.catch_warnings():
        # pydicom warns with the offending header value in the text: keep it out of logs.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        for path in source_files(src):
            header = _read_header(path)
            if header is not None:
                headers.append(header)
    if not headers:
        raise InputRejected(
            ReasonCode.NOT_DICOM,
            "no DICOM Part-10 file found (files need the 'DICM' header); point the manifest "
            "at a DICOM series folder or a NIfTI file (.nii/.nii.gz)",
        )
    # DICOMDIR, structured reports and other image-less objects can sit beside a series.
    images = [h for h in headers if h.rows > 0 and h.columns > 0]
    if not images:
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            "the DICOM file(s) hold no image (no Rows/Columns); point at an image series",
        )
    if isinstance(src, SeriesRef):
        images = [h for h in images if h.series_uid == src.series_uid]
        if not images:
            raise InputRejected(
                ReasonCode.MISSING_FILE,
                "no image of the selected series is in this folder; check the '#series' "
                "selector of the manifest entry",
            )
    else:
        n_series = len({h.series_uid for h in images})
        if n_series > 1:
            raise InputRejected(
                ReasonCode.MULTIPLE_SERIES,
                f"the folder holds {n_series} DICOM series; pick one with 'folder#"
                "<SeriesInstanceUID>' in the manifest or split the folder",
            )
    return images


def series_files(source: Path | str | SeriesRef) -> list[Path]:
    """Files of the one series ``source`` names, sorted by path (used for content hashes)."""
    return sorted(h.path for h in read_series_headers(source))


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


def _check_slice_geometry(h: _SliceHeader) -> None:
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


def _check_headers(
    headers: list[_SliceHeader], modalities: Sequence[str] | None, min_slices: int
) -> None:
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
class _Geometry:
    """Sorted slices and where the output slices lie (positions along the slice normal)."""

    order: list[_SliceHeader]
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


def _geometry(
    headers: list[_SliceHeader],
    tol: float,
    on_inconsistent: SpacingPolicy,
    on_tilt: TiltPolicy,
) -> _Geometry:
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
    return _Geometry(
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


# pydicom lists each missing plugin as "<plugin> - requires <packages>" (no header values).
_REQUIRES = re.compile(r"^\s*(\S+) - requires (.+)$", re.MULTILINE)


def _decode_error(exc: Exception, syntax: str) -> InputRejected:
    """Map pydicom's pixel-decoding exceptions to reason codes."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and (
        "missing dependencies" in text or "does not support" in text
    ):
        options = "; ".join(f"{m[0]}: {m[1]}" for m in _REQUIRES.findall(text)) or (
            "pylibjpeg with pylibjpeg-libjpeg / pylibjpeg-openjpeg, or python-gdcm"
        )
        return InputRejected(
            ReasonCode.CODEC_UNAVAILABLE,
            f"the pixel data is compressed as {syntax}, which no installed decoder handles; "
            f"install a pydicom decoder plugin ({options}) and retry",
        )
    return InputRejected(
        ReasonCode.PIXEL_DECODE_FAILED,
        f"pixel data of a slice cannot be decoded ({type(exc).__name__}: the data is "
        "truncated or does not match the image attributes); re-export the series",
    )


def _decode_into(out: np.ndarray, path: Path, rows: int, columns: int) -> None:
    """Read one file fully and write its rescaled pixels into ``out`` (columns, rows) float32.

    ``out`` is a slice of a Fortran-ordered stack, so ``px.T`` lands as one contiguous copy.
    """
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = None
    try:
        ds = dcmread(path)
        if "TransferSyntaxUID" not in ds.file_meta:
            # The dataset itself was parsed with pydicom's guess of its encoding; the pixel
            # decoder needs the syntax spelled out, so give it the uncompressed one it matched.
            implicit, little = ds.original_encoding
            if not little:
                raise ValueError("big endian dataset without transfer syntax")
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
            )
        px = ds.pixel_array
    except Exception as exc:  # decoders raise ValueError/RuntimeError/AttributeError/...
        syntax = ds.file_meta.get("TransferSyntaxUID") if ds is not None else None
        raise _decode_error(exc, getattr(syntax, "name", "an unknown transfer syntax")) from None
    if px.shape != (rows, columns):
        raise InputRejected(
            ReasonCode.PIXEL_DECODE_FAILED,
            "a slice decodes to a different size than its header says (colour or multi-frame "
            "data?); export grayscale single-frame images",
        )
    slope = ds.get("RescaleSlope", 1.0)
    intercept = ds.get("RescaleIntercept", 0.0)
    try:
        slope = float(slope if slope not in (None, "") else 1.0)
        intercept = float(intercept if intercept not in (None, "") else 0.0)
    except (TypeError, ValueError):
        raise InputRejected(
            ReasonCode.UNREADABLE,
            "RescaleSlope/RescaleIntercept are malformed; re-export the series",
        ) from None
    out[...] = px.T
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def _resample_z(stack: np.ndarray, pos: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Linearly interpolate slices at their true positions ``pos`` onto ``targets``."""
    hi = np.clip(np.searchsorted(pos, targets, side="right"), 1, len(pos) - 1)
    lo = hi - 1
    w = ((targets - pos[lo]) / (pos[hi] - pos[lo])).clip(0.0, 1.0).astype(np.float32)
    out = np.empty((*stack.shape[:2], len(targets)), dtype=np.float32, order="F")
    for k in range(len(targets)):
        a, b = stack[:, :, lo[k]], stack[:, :, hi[k]]
        out[:, :, k] = a + w[k] * (b - a)
    return out


def read_dicom_series(
    source: Path | str | SeriesRef,
    *,
    modalities: Sequence[str] | None = None,
    min_slices: int = 1,
    spacing_tolerance: float = 0.05,
    on_inconsistent_spacing: SpacingPolicy = "reject",
    on_gantry_tilt: TiltPolicy = "reject",
    max_voxels: int = MAX_VOXELS,
    workers: int = DEFAULT_DECODE_WORKERS,
) -> Volume:
    """Read and validate one DICOM series (a file, a folder, or a ``SeriesRef``).

    ``modalities`` lists allowed DICOM Modality values (None/empty: any). Raises
    ``InputRejected`` with a reason code for every user-fixable problem.
    """
    headers = read_series_headers(source)
    _check_headers(headers, modalities, min_slices)
    rows, columns = headers[0].rows, headers[0].columns
    check_voxel_count((columns, rows, len(headers)), max_voxels)
    geo = _geometry(headers, spacing_tolerance, on_inconsistent_spacing, on_gantry_tilt)
    if geo.targets is not None:
        check_voxel_count((columns, rows, len(geo.targets)), max_voxels)
    # Fortran order keeps each slice contiguous (the layout nibabel uses too): filling a
    # C-ordered (X, Y, Z) stack slice by slice is ~10x slower (strided writes).
    stack = np.empty((columns, rows, len(geo.order)), dtype=np.float32, order="F")

    def fill(k: int) -> None:
        _decode_into(stack[:, :, k], geo.order[k].path, rows, columns)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # list() re-raises the first worker exception (an InputRejected) here.
            list(pool.map(fill, range(len(geo.order))))
    if not np.isfinite(stack).all():
        raise InputRejected(
            ReasonCode.NON_FINITE_VALUES,
            "the image holds NaN or infinite values after rescaling; check the export",
        )
    meta: dict[str, Any] = {}
    if geo.drift is not None:
        # Each slice moved back by its own measured in-plane offset, so the result is right
        # even when the offsets are not exactly linear; then slices stack along the normal.
        shift_slices(stack, geo.drift)
        meta = {"tilt_degrees": round(geo.tilt_degrees, 3), "desheared": True}
    if geo.targets is not None:
        stack = _resample_z(stack, geo.positions, geo.targets)
    return Volume(array=stack, affine=geo.affine, meta=meta)


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    *,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    z_positions: Sequence[float] | None = None,
    slice_spacing: float = 1.0,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    modality: str = "CT",
    series_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``hu`` (X, Y, Z: column, row, slice) as a single-frame DICOM series.

    Slice k lies at ``origin + normal * z_positions[k]`` (default ``k * slice_spacing``), in
    LPS mm. For synthetic test data, demos and benchmarks; ``extra`` sets more attributes.
    Returns the written paths (``IM0001.dcm``... in slice order).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    nz = hu.shape[2]
    zs = (
        np.arange(nz) * slice_spacing
        if z_positions is None
        else np.asarray(z_positions, dtype=np.float64)
    )
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    stored = np.round((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    stored = stored.clip(-32768, 32767).astype(np.int16)
    paths = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in iop]
        pos = np.asarray(origin, dtype=np.float64) + normal * zs[k]
        ds.ImagePositionPatient = [round(float(v), 4) for v in pos]
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SliceThickness = float(slice_spacing)
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = float(slope), float(intercept)
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
