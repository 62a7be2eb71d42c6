"""The one DICOM writer (``synth.dicom_writer``): what it writes is what it was asked to."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from synth.dicom_writer import ds_text, write_dicom_series


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1"), (-1024.0, "-1024"), (-37.25, "-37.25"), (-0.0, "0"), (0.7, "0.7"),
     (2.5e-05, "2.5e-05")],
)
def test_ds_text_is_the_shortest_round_trip(value: float, text: str) -> None:
    assert ds_text(value) == text


@pytest.mark.parametrize("value", [float(np.cos(np.radians(20))), 123456789.123456789, -1 / 3])
def test_ds_text_fits_16_chars_and_keeps_what_fits(value: float) -> None:
    s = ds_text(value)
    assert len(s) <= 16
    assert float(s) == pytest.approx(value, rel=1e-12)


def _volume(shape: tuple[int, int, int] = (6, 5, 4)) -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1500, shape).astype(np.float32)


def test_slices_are_what_pydicom_would_write(tmp_path: Path) -> None:
    c, s = float(np.cos(np.radians(20))), float(np.sin(np.radians(20)))
    paths = write_dicom_series(
        tmp_path, _volume(), orientation=(1, 0, 0, 0, c, s), slope=2.0, intercept=-1000.0,
        extra={"PatientName": "Doe^Jane", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]},
    )
    for p in paths:
        buf = io.BytesIO()
        pydicom.dcmread(p).save_as(buf, enforce_file_format=True)
        assert buf.getvalue() == p.read_bytes()


def test_values_positions_and_instance_order_read_back(tmp_path: Path) -> None:
    vol = _volume()
    zs = [0.0, 2.0, 4.5, 7.0]
    paths = write_dicom_series(
        tmp_path, vol, pixel_spacing=(0.8, 0.6), z_positions=zs, origin=(-10.0, 5.0, 30.0),
        slope=2.0, intercept=-1000.0, reverse_instances=True,
        file_name=lambda inst: f"slice_{inst}.dcm",
    )
    assert [p.name for p in paths] == [f"slice_{i}.dcm" for i in (1, 2, 3, 4)]
    for inst, p in enumerate(paths, start=1):
        ds = pydicom.dcmread(p)
        k = 4 - inst  # instance 1 is the highest z
        assert int(ds.InstanceNumber) == inst
        assert [float(v) for v in ds.ImagePositionPatient] == [-10.0, 5.0, 30.0 + zs[k]]
        assert float(ds.SliceLocation) == 30.0 + zs[k]
        assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.6]
        assert (ds.Rows, ds.Columns) == (5, 6)
        hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_allclose(hu.T, np.rint((vol[:, :, k] + 1000.0) / 2) * 2 - 1000.0)
    assert "SpacingBetweenSlices" not in ds  # uneven positions: no single spacing


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    a = write_dicom_series(tmp_path / "a", _volume(), series_uid="1.2.3.4")
    b = write_dicom_series(tmp_path / "b", _volume(), series_uid="1.2.3.4")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    c = write_dicom_series(tmp_path / "c", _volume())
    assert pydicom.dcmread(c[0]).SeriesInstanceUID != "1.2.3.4"


def test_mr_without_rescale_has_no_rescale_attributes(tmp_path: Path) -> None:
    (p,) = write_dicom_series(tmp_path, np.full((4, 4, 1), 7.0), modality="MR", intercept=0.0)
    ds = pydicom.dcmread(p)
    assert ds.Modality == "MR" and "RescaleIntercept" not in ds
    assert (ds.pixel_array == 7).all()


def test_extra_cannot_set_a_per_slice_element(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="InstanceNumber"):
        write_dicom_series(tmp_path, _volume(), extra={"InstanceNumber": 3})
