"""DICOM series reading: real pydicom test files plus series generated with pydicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from modalities.dicom import read_dicom_series, series_files
from modalities.errors import InputRejected, ReasonCode
from modalities.paths import SeriesRef
from synth.dicom_writer import write_dicom_series

PHI_NAME, PHI_ID = "Doe^Jane", "MRN4711"
PHI = {"PatientName": PHI_NAME, "PatientID": PHI_ID, "PatientBirthDate": "19700101"}


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name))


CT2 = pydicom_file("CT_small.dcm").parent / "dicomdirtests" / "77654033" / "CT2"


def reject(source, **kw) -> InputRejected:
    with pytest.raises(InputRejected) as info:
        read_dicom_series(source, **kw)
    err = info.value
    for value in (PHI_NAME, PHI_ID, "19700101", "Doe", "Jane"):
        assert value not in str(err)
    return err


def hu_volume(shape=(12, 10, 9), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.float32)


# --- real files shipped with pydicom -------------------------------------------------------


def test_ct_small_is_too_few_slices_by_default():
    err = reject(pydicom_file("CT_small.dcm"), modalities=["CT"], min_slices=8)
    assert err.code is ReasonCode.TOO_FEW_SLICES


def test_ct_small_single_slice_accepted_with_header_geometry():
    vol = read_dicom_series(pydicom_file("CT_small.dcm"), modalities=["CT"], min_slices=1)
    ds = dcmread(pydicom_file("CT_small.dcm"))
    assert vol.array.shape == (128, 128, 1) and vol.array.dtype == np.float32
    ps = [float(v) for v in ds.PixelSpacing]
    assert vol.spacing == pytest.approx((ps[1], ps[0], float(ds.SliceThickness)))
    ipp = [float(v) for v in ds.ImagePositionPatient]
    # LPS -> RAS: the first two coordinates change sign.
    assert vol.affine[:3, 3] == pytest.approx([-ipp[0], -ipp[1], ipp[2]])
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[:, :, 0], expected)


def test_mr_small_read_as_ct_is_wrong_modality():
    err = reject(pydicom_file("MR_small.dcm"), modalities=["CT"], min_slices=1)
    assert err.code is ReasonCode.WRONG_MODALITY
    assert "MR" in err.message  # the coded Modality helps the user; it is not PHI


@pytest.mark.parametrize("policy", ["reject", "resample"])
def test_ct2_gap_too_large_is_refused_whatever_the_policy(policy):
    # Gaps 202.5, 1.25, 1.25 mm: resampling would invent 161 of 165 slices.
    err = reject(CT2, modalities=["CT"], min_slices=4, on_inconsistent_spacing=policy)
    assert err.code is ReasonCode.SLICE_GAP_TOO_LARGE
    assert "resample" not in err.message.replace("resampling would invent", "")
    assert "202.5 mm" in err.message


def test_truncated_pixel_data_caught_from_the_header():
    # 8192 bytes declared, the file ends 62 bytes early: rejected before decoding.
    err = reject(pydicom_file("MR_truncated.dcm"), modalities=["MR"], min_slices=1)
    assert err.code is ReasonCode.TRUNCATED_FILE


def test_bad_vr_is_unreadable():
    # pydicom parses the header with only a warning, but NumberOfFrames is '1A': the pixel
    # layout cannot be known, so the file is rejected before decoding.
    err = reject(pydicom_file("badVR.dcm"), modalities=None, min_slices=1)
    assert err.code is ReasonCode.UNREADABLE
    assert "1A" not in err.message  # header values stay out of messages


def test_file_without_dicm_header_is_not_dicom():
    # no_meta.dcm lacks the Part-10 preamble; we do not force-read such files.
    assert reject(pydicom_file("no_meta.dcm")).code is ReasonCode.NOT_DICOM


def test_meta_missing_tsyntax_holds_no_image():
    # That file has only an empty element and pixel bytes: no Rows/Columns to decode with.
    assert reject(pydicom_file("meta_missing_tsyntax.dcm")).code is ReasonCode.UNSUPPORTED_FORMAT


def test_missing_transfer_syntax_falls_back_to_the_parsed_encoding(tmp_path):
    hu = hu_volume((8, 6, 1))
    (path,) = write_dicom_series(tmp_path / "s", hu, slice_spacing=3.0)
    ds = dcmread(path)
    del ds.file_meta.TransferSyntaxUID
    out = tmp_path / "nosyntax.dcm"
    dcmwrite(out, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert "TransferSyntaxUID" not in dcmread(out).file_meta
    vol = read_dicom_series(out)
    np.testing.assert_array_equal(vol.array, hu)


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless),
    ],
)
def test_compressed_series_needs_a_decoder(name, syntax):
    if get_decoder(syntax).is_available:
        # With a decoder the lossless file must equal the uncompressed original.
        vol = read_dicom_series(pydicom_file(name), modalities=["MR"])
        ref = read_dicom_series(pydicom_file("MR_small.dcm"), modalities=["MR"])
        np.testing.assert_array_equal(vol.array, ref.array)
    else:
        err = reject(pydicom_file(name), modalities=["MR"])
        assert err.code is ReasonCode.CODEC_UNAVAILABLE
        # The message names the syntax and the plugins pydicom says would decode it.
        assert "JPEG" in err.message and "pylibjpeg" in err.message


def test_codec_unavailable_when_no_plugin_installed():
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    err = reject(pydicom_file("MR_small_jpeg_ls_lossless.dcm"), modalities=["MR"])
    assert err.code is ReasonCode.CODEC_UNAVAILABLE


# --- generated series -----------------------------------------------------------------------


def test_axial_series_round_trips_geometry_and_values(tmp_path):
    hu = hu_volume()
    write_dicom_series(
        tmp_path,
        hu,
        pixel_spacing=(0.8, 0.6),
        slice_spacing=2.5,
        origin=(-100, -50, 20),
        extra=PHI,
    )
    vol = read_dicom_series(tmp_path, modalities=["CT"], min_slices=8)
    np.testing.assert_array_equal(vol.array, hu)
    expected = np.array(
        [[-0.6, 0, 0, 100], [0, -0.8, 0, 50], [0, 0, 2.5, 20], [0, 0, 0, 1]], dtype=float
    )
    np.testing.assert_allclose(vol.affine, expected, atol=1e-6)
    assert vol.spacing == pytest.approx((0.6, 0.8, 2.5))


def test_reversed_slice_order_is_sorted_by_position(tmp_path):
    hu = hu_volume()
    nz = hu.shape[2]
    # Instance 1 is the top slice: files in name order run from superior to inferior.
    write_dicom_series(
        tmp_path, hu[:, :, ::-1], z_positions=[2.0 * (nz - 1 - k) for k in range(nz)]
    )
    vol = read_dicom_series(tmp_path, min_slices=8)
    np.testing.assert_array_equal(vol.array, hu)
    assert vol.affine[2, 2] == pytest.approx(2.0) and vol.affine[2, 3] == pytest.approx(0.0)


def test_sagittal_series_affine_maps_voxels_to_patient_space(tmp_path):
    hu = hu_volume((10, 8, 9))
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run posterior, columns run inferior
    write_dicom_series(tmp_path, hu, orientation=iop, origin=(5, -20, 40), slice_spacing=1.5)
    vol = read_dicom_series(tmp_path, min_slices=8)
    # Voxel (i, j, k) in LPS: origin + i*row*cs + j*col*rs + k*normal*dz, normal = row x col.
    row, col = np.array(iop[:3]), np.array(iop[3:])
    i, j, k = 3, 2, 4
    lps = np.array([5, -20, 40]) + i * row + j * col + k * 1.5 * np.cross(row, col)
    ras = vol.affine @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)


def test_non_dicom_files_in_folder_are_ignored(tmp_path):
    write_dicom_series(tmp_path / "s", hu_volume())
    (tmp_path / "s" / "README.txt").write_text("not an image")
    (tmp_path / "s" / "sub").mkdir()
    shutil.move(tmp_path / "s" / "IM0003.dcm", tmp_path / "s" / "sub" / "IM0003.dcm")
    vol = read_dicom_series(tmp_path / "s", min_slices=8)
    assert vol.array.shape[2] == 9


def test_folder_without_dicom_is_not_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert reject(tmp_path).code is ReasonCode.NOT_DICOM


def test_missing_middle_slice(tmp_path):
    paths = write_dicom_series(tmp_path, hu_volume(), extra=PHI)
    paths[4].unlink()
    err = reject(tmp_path, min_slices=4)
    assert err.code is ReasonCode.MISSING_SLICES
    assert "1 slice" in err.message


def test_uneven_gap_rejected_or_resampled(tmp_path):
    hu = hu_volume((6, 5, 10))
    zs = [0, 2, 4, 6, 8, 10.5, 12.5, 14.5, 16.5, 18.5]  # one 2.5 mm gap among 2 mm gaps
    write_dicom_series(tmp_path, hu, z_positions=zs)
    assert reject(tmp_path, min_slices=8).code is ReasonCode.INCONSISTENT_SPACING
    vol = read_dicom_series(tmp_path, min_slices=8, on_inconsistent_spacing="resample")
    assert vol.array.shape[2] == 10  # 18.5 mm at ~2 mm (the median gap) -> 10 slices
    assert vol.spacing[2] == pytest.approx(18.5 / 9)
    # Output slice 5 lies between the true neighbours at 8 mm and 10.5 mm.
    z5 = 5 * 18.5 / 9
    w = (z5 - 8) / 2.5
    np.testing.assert_allclose(
        vol.array[:, :, 5], (1 - w) * hu[:, :, 4] + w * hu[:, :, 5], rtol=1e-5, atol=1e-3
    )


def test_duplicate_positions_rejected(tmp_path):
    write_dicom_series(tmp_path, hu_volume((6, 5, 9)), z_positions=[0, 1, 2, 3, 3, 4, 5, 6, 7])
    assert reject(tmp_path, min_slices=8).code is ReasonCode.INCONSISTENT_SPACING


def test_two_series_rejected_unless_selected(tmp_path):
    a, b = hu_volume(seed=1), hu_volume(seed=2)
    write_dicom_series(tmp_path / "a", a, series_uid="1.2.3.1", extra=PHI)
    write_dicom_series(tmp_path / "b", b, series_uid="1.2.3.2", origin=(0, 0, 100))
    err = reject(tmp_path, min_slices=8)
    assert err.code is ReasonCode.MULTIPLE_SERIES
    assert "1.2.3" not in err.message  # UIDs are identifiers: never in messages
    vol = read_dicom_series(SeriesRef(tmp_path, "1.2.3.2"), min_slices=8)
    np.testing.assert_array_equal(vol.array, b)
    assert series_files(SeriesRef(tmp_path, "1.2.3.1")) == sorted((tmp_path / "a").iterdir())
    err = reject(SeriesRef(tmp_path, "9.9.9"), min_slices=8)
    assert err.code is ReasonCode.MISSING_FILE


def test_differing_orientation_rejected(tmp_path):
    write_dicom_series(tmp_path / "x", hu_volume((6, 6, 9)))
    path = tmp_path / "x" / "IM0005.dcm"
    ds = dcmread(path)
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.9, -0.43589]
    ds.save_as(path)
    assert reject(tmp_path / "x", min_slices=8).code is ReasonCode.INCONSISTENT_ORIENTATION


def test_differing_pixel_spacing_rejected(tmp_path):
    write_dicom_series(tmp_path, hu_volume((6, 6, 9)))
    ds = dcmread(tmp_path / "IM0002.dcm")
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(tmp_path / "IM0002.dcm")
    assert reject(tmp_path, min_slices=8).code is ReasonCode.INCONSISTENT_SHAPE


def test_rescale_slope_and_intercept_applied_per_slice(tmp_path):
    hu = np.round(hu_volume((6, 5, 8)) / 2) * 2  # representable with slope 2
    write_dicom_series(tmp_path, hu, slope=2.0, intercept=-1000.0)
    vol = read_dicom_series(tmp_path, min_slices=8, workers=1)
    np.testing.assert_array_equal(vol.array, hu)


def test_parallel_decode_equals_serial(tmp_path):
    write_dicom_series(tmp_path, hu_volume((16, 16, 12)))
    one = read_dicom_series(tmp_path, min_slices=8, workers=1)
    four = read_dicom_series(tmp_path, min_slices=8, workers=4)
    np.testing.assert_array_equal(one.array, four.array)


def test_non_finite_after_rescale_rejected(tmp_path):
    write_dicom_series(tmp_path, hu_volume((6, 5, 8)))
    ds = dcmread(tmp_path / "IM0003.dcm")
    ds.RescaleSlope = "1e400"  # overflows float32 to inf
    ds.save_as(tmp_path / "IM0003.dcm")
    assert reject(tmp_path, min_slices=8).code is ReasonCode.NON_FINITE_VALUES


def test_truncated_slice_inside_a_series(tmp_path):
    paths = write_dicom_series(tmp_path, hu_volume((16, 16, 8)), extra=PHI)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[:-100])
    assert reject(tmp_path, min_slices=8).code is ReasonCode.TRUNCATED_FILE


# --- geometry sanity (issue 10) ------------------------------------------------------------


def test_position_jitter_below_a_tenth_of_a_voxel_is_not_tilt(tmp_path):
    paths = write_dicom_series(tmp_path, hu_volume((16, 16, 8)))
    ds = dcmread(paths[3])
    ds.ImagePositionPatient = [0.05, -0.04, float(ds.ImagePositionPatient[2])]
    ds.save_as(paths[3])
    assert read_dicom_series(tmp_path, min_slices=8).shape == (16, 16, 8)


@pytest.mark.parametrize(
    ("attr", "value", "code", "text"),
    [
        ("PixelSpacing", [0.0, 0.0], ReasonCode.INVALID_SPACING, "(0, 0) mm"),
        ("PixelSpacing", [-0.7, 0.7], ReasonCode.INVALID_SPACING, "(-0.7, 0.7) mm"),
        (
            "ImageOrientationPatient",
            [2, 0, 0, 0, 2, 0],
            ReasonCode.INVALID_ORIENTATION,
            "length 2 and 2",
        ),
        (
            "ImageOrientationPatient",
            [1, 0, 0, 0.5, 0.8660254, 0],
            ReasonCode.INVALID_ORIENTATION,
            "60.0 degrees apart",
        ),
        (
            "ImageOrientationPatient",
            [1, 0, 0, 1, 0, 0],
            ReasonCode.INVALID_ORIENTATION,
            "0.0 degrees apart",
        ),
    ],
)
def test_header_geometry_sanity(tmp_path, attr, value, code, text):
    write_dicom_series(tmp_path, hu_volume((8, 8, 8)), extra={**PHI, attr: value})
    err = reject(tmp_path, min_slices=8)
    assert err.code is code and text in err.message
    assert str(tmp_path) not in err.message and "IM000" not in err.message


def test_huge_declared_matrix_rejected_before_allocation(tmp_path):
    paths = write_dicom_series(tmp_path, hu_volume((8, 8, 8)))
    for p in paths:
        ds = dcmread(p)
        ds.Rows = ds.Columns = 65535
        ds.save_as(p)
    err = reject(tmp_path, min_slices=8)
    assert err.code is ReasonCode.TRUNCATED_FILE and "128 bytes" in err.message
    assert reject(tmp_path, min_slices=8, max_voxels=10).code is ReasonCode.TRUNCATED_FILE
    ok = tmp_path.parent / "ok"
    write_dicom_series(ok, hu_volume((8, 8, 8)))
    assert reject(ok, min_slices=8, max_voxels=511).code is ReasonCode.VOLUME_TOO_LARGE
