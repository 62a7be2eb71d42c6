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

Steps 2-4 (header checks, slice order, spacing, tilt, resampling) live in
``modalities.dicom_geometry``; this module reads headers and decodes pixels.

Error messages never contain header values, file names or paths (they can carry PHI); the
caller attaches a sanitized source reference with ``InputRejected.with_source``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from struct import error as struct_error
from typing import Any

import numpy as np

from modalities.dicom_geometry import (
    MAX_VOXELS,
    SliceHeader,
    SpacingPolicy,
    TiltPolicy,
    Volume,
    check_headers,
    check_voxel_count,
    resample_z,
    series_geometry,
    shift_slices,
)
from modalities.errors import InputRejected, ReasonCode
from modalities.paths import SeriesRef, source_files

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


def _read_header(path: Path) -> SliceHeader | None:
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
    return SliceHeader(
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


def read_series_headers(source: Path | str | SeriesRef) -> list[SliceHeader]:
    """Headers of the image files of one series, unsorted and not yet geometry-checked.

    Raises NOT_DICOM (no DICOM file), UNSUPPORTED_FORMAT (DICOM but no image), or
    MULTIPLE_SERIES (several series and no selector).
    """
    quiet_dicom_logs()
    src = as_source(source)
    headers: list[SliceHeader] = []
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
    check_headers(headers, modalities, min_slices)
    rows, columns = headers[0].rows, headers[0].columns
    check_voxel_count((columns, rows, len(headers)), max_voxels)
    geo = series_geometry(headers, spacing_tolerance, on_inconsistent_spacing, on_gantry_tilt)
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
        stack = resample_z(stack, geo.positions, geo.targets)
    return Volume(array=stack, affine=geo.affine, meta=meta)

