"""The one DICOM writer of clinfuse's test data: a volume as a single-frame Part-10 series.

Synthetic cohorts (``synth.volumes``), the planted bad inputs, benchmarks and tests all
write DICOM through ``write_dicom_series``; the product only reads DICOM
(``modalities.dicom``). Output is deterministic: the same arguments (with a given
``series_uid``) give the same bytes.

Why not ``Dataset.save_as`` per slice: pydicom spends ~3 ms per file re-encoding ~50
identical elements. ``SliceEncoder`` encodes the constant parts once and splices in the five
that change per slice; the bytes equal ``dcmwrite``'s (tests/synth/test_synth.py checks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # axial: rows along +x, columns +y
# SOPInstanceUID, InstanceNumber, ImagePositionPatient, SliceLocation, PixelData.
_VARYING = (0x00080018, 0x00200013, 0x00200032, 0x00201041, 0x7FE00010)
_META_SOP = 0x00020003  # MediaStorageSOPInstanceUID


def ds_text(value: float) -> str:
    """DICOM DS text (<= 16 chars): the shortest text that round-trips ``value`` when it fits.

    Whole numbers lose their ".0" ("1", "-1024"), so values on a decimal grid read back as
    written in truth.csv; longer values keep as many significant digits as 16 chars allow.
    """
    v = float(value)
    s = repr(v)
    if s.endswith(".0"):
        s = s[:-2]
    if s == "-0":
        s = "0"
    digits = 15
    while len(s) > 16:
        s = f"{v:.{digits}g}"
        digits -= 1
    return s


def write_dicom_series(
    folder: Path,
    values: np.ndarray,
    *,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    slice_spacing: float = 1.0,
    z_positions: Sequence[float] | None = None,
    orientation: Sequence[float] = DEFAULT_ORIENTATION,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    reverse_instances: bool = False,
    file_name: Callable[[int], str] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``values`` (X, Y, Z: column, row, slice; HU for CT) as one file per slice.

    Slice k lies at ``origin + normal * z_positions[k]`` (default ``k * slice_spacing``), in
    LPS mm; ``pixel_spacing`` is (row, column) spacing as in the DICOM attribute. Stored
    pixels are ``rint((values - intercept) / slope)`` as int16, computed in ``values``'
    float precision. CT always carries RescaleSlope/Intercept/Type; other modalities only
    when the rescale is not the identity (``slope=1, intercept=0``).

    InstanceNumber runs along +z, or head to feet with ``reverse_instances``. Files are
    named ``file_name(instance)`` (default ``IM0001.dcm``...), called in instance order.
    ``extra`` sets further attributes (PHI, dates, ImageType, ...) by keyword; it may
    override constant ones (PixelSpacing...) but not the per-slice elements. Returns the
    paths in instance order. Study and frame UIDs default to ones derived from the series.
    """
    from pydicom import __version__ as pydicom_version
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        MRImageStorage,
        generate_uid,
    )

    nx, ny, nz = values.shape
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    zs = (
        np.arange(nz) * slice_spacing
        if z_positions is None
        else np.asarray(z_positions, dtype=np.float64)
    )
    series_uid = series_uid or generate_uid()
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    folder.mkdir(parents=True, exist_ok=True)

    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0  # placeholders, replaced per slice
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = "1.2"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom_version}"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid or generate_uid(entropy_srcs=[series_uid, "study"])
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid or generate_uid(entropy_srcs=[series_uid, "frame"])
    ds.SliceThickness = ds_text(slice_spacing)
    if z_positions is None:
        ds.SpacingBetweenSlices = ds_text(slice_spacing)
    ds.SOPInstanceUID = "1.2"
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = ["0", "0", "0"]
    ds.SliceLocation = "0"
    ds.add_new(0x7FE00010, "OW", b"")
    ds.ImageOrientationPatient = [ds_text(v) for v in iop]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [ds_text(pixel_spacing[0]), ds_text(pixel_spacing[1])]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if modality == "CT" or (slope, intercept) != (1.0, 0.0):
        ds.RescaleIntercept, ds.RescaleSlope = ds_text(intercept), ds_text(slope)
    if modality == "CT":
        ds.RescaleType = "HU"
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
        if ds.data_element(key).tag in _VARYING:
            raise ValueError(f"extra cannot set the per-slice element {key}")

    arr = np.asarray(values)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if intercept != 0.0:
        arr = arr - intercept
    if slope != 1.0:
        arr = arr / slope
    stored = np.clip(np.rint(arr), -32768, 32767).astype("<i2")

    enc = SliceEncoder(ds)
    name = file_name or (lambda inst: f"IM{inst:04d}.dcm")
    paths = []
    for inst in range(1, nz + 1):
        k = nz - inst if reverse_instances else inst - 1  # slice index along +z
        pos = np.asarray(origin, dtype=np.float64) + normal * zs[k]
        # DICOM pixel rows run along the column direction (j), columns along the row one (i).
        data = enc.encode(
            sop=generate_uid(entropy_srcs=[series_uid, str(inst)]),
            instance=inst,
            position=[ds_text(v) for v in pos],
            location=ds_text(float(pos @ normal)),
            pixels=np.ascontiguousarray(stored[:, :, k].T).tobytes(),
        )
        path = folder / name(inst)
        path.write_bytes(data)
        paths.append(path)
    return paths


class SliceEncoder:
    """Explicit-VR little-endian Part-10 bytes of a series' slices, constant parts cached.

    The template dataset must hold the per-slice elements (``_VARYING``) as placeholders;
    ``encode`` puts each slice's values where they sit in tag order.
    """

    def __init__(self, template: Any) -> None:
        self.meta = _split(template.file_meta, (0x00020000, _META_SOP))[1:]
        self.segments = _split(template, _VARYING)

    def encode(
        self, sop: str, instance: int, position: list[str], location: str, pixels: bytes
    ) -> bytes:
        meta = self.meta[0] + _element(_META_SOP, "UI", sop) + self.meta[1]
        varying = [
            _element(0x00080018, "UI", sop),
            _element(0x00200013, "IS", str(instance)),
            _element(0x00200032, "DS", "\\".join(position)),
            _element(0x00201041, "DS", location),
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
