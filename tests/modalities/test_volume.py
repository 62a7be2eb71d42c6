"""NIfTI reading, MONAI preprocessing (geometry, intensities) and the CT/MRI modalities."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydantic
import pytest
import torch
from pydicom.data import get_testdata_file

from modalities.base import modality_class
from modalities.ct import CTModality, CTSpec
from modalities.dicom_geometry import Volume
from modalities.errors import InputRejected, ReasonCode
from modalities.mri import MRIModality
from modalities.paths import SeriesRef
from modalities.volume import VolumeSpec, preprocess_volume, preprocess_with_affine, read_nifti
from synth.dicom_writer import write_dicom_series

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    torch.set_num_threads(2)


def rejected(fn, *args) -> InputRejected:
    with pytest.raises(InputRejected) as info:
        fn(*args)
    return info.value


# --- NIfTI ---------------------------------------------------------------------------------


def test_anatomical_nifti_geometry_from_affine():
    img = nib.load(NIB_DATA / "anatomical.nii")
    vol = read_nifti(NIB_DATA / "anatomical.nii")
    assert vol.array.shape == (33, 41, 25) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.affine, img.affine)
    assert vol.spacing == pytest.approx((2.0, 2.0, 2.0))
    np.testing.assert_array_equal(vol.array, img.get_fdata(dtype=np.float32))


def test_4d_nifti_rejected():
    err = rejected(read_nifti, NIB_DATA / "example4d.nii.gz")
    assert err.code is ReasonCode.UNSUPPORTED_FORMAT


def test_4d_nifti_with_one_volume_accepted(tmp_path):
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), path)
    assert read_nifti(path).array.shape == (4, 5, 6)


def test_nan_voxel_is_non_finite(tmp_path):
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    err = rejected(read_nifti, tmp_path / "nan.nii")
    assert err.code is ReasonCode.NON_FINITE_VALUES


def test_garbage_nifti_unreadable(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"this is not gzip")
    assert rejected(read_nifti, tmp_path / "bad.nii.gz").code is ReasonCode.UNREADABLE


# --- preprocessing -------------------------------------------------------------------------


def test_preprocess_shape_dtype_and_hu_window():
    rng = np.random.default_rng(0)
    arr = rng.uniform(-2000, 2000, (40, 30, 20)).astype(np.float32)
    vol = Volume(arr, np.diag([1.5, 1.5, 3.0, 1.0]))
    spec = VolumeSpec(size=(24, 24, 24))
    out = preprocess_volume(vol, spec)
    assert out.shape == (1, 24, 24, 24) and out.dtype == np.float16
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_hu_window_maps_low_to_zero_and_high_to_one():
    arr = np.full((16, 16, 16), -3000.0, np.float32)
    arr[8:, :, :] = 3000.0
    spec = VolumeSpec(spacing=(1, 1, 1), size=(16, 16, 16), window=(-1000, 400))
    out = preprocess_volume(Volume(arr, np.eye(4)), spec)[0]
    assert np.all(out[:8] == 0.0) and np.all(out[8:] == 1.0)
    mid = np.full((16, 16, 16), -300.0, np.float32)  # halfway in the window
    assert preprocess_volume(Volume(mid, np.eye(4)), spec).mean() == pytest.approx(0.5, abs=1e-3)


def test_zscore_intensity():
    arr = np.random.default_rng(1).normal(300, 50, (16, 16, 16)).astype(np.float32)
    spec = VolumeSpec(intensity="zscore", spacing=(1, 1, 1), size=(16, 16, 16))
    out = preprocess_volume(Volume(arr, np.eye(4)), spec).astype(np.float32)
    assert out.mean() == pytest.approx(0.0, abs=1e-2)
    assert out.std() == pytest.approx(1.0, abs=1e-2)


def test_resampling_keeps_world_geometry():
    # 0.7 mm in-plane shrinks (area), 3 mm slices grow (trilinear); a marker's world position
    # must survive in the output affine.
    arr = np.full((100, 90, 40), -1000.0, np.float32)
    arr[49:52, 29:32, 19:22] = 1000.0
    affine = np.diag([-0.7, -0.7, 3.0, 1.0])
    affine[:3, 3] = [30, 20, -50]
    world = affine @ np.array([50, 30, 20, 1.0])
    spec = VolumeSpec(spacing=(2, 2, 2), size=(36, 32, 60))
    out, out_affine = preprocess_with_affine(Volume(arr, affine), spec)
    assert np.linalg.norm(out_affine[:3, :3], axis=0) == pytest.approx([2, 2, 2], rel=0.03)
    expected = (np.linalg.inv(out_affine) @ world)[:3]
    w = np.clip(out[0].astype(np.float64), 0, None)
    centroid = np.array([(w * g).sum() / w.sum() for g in np.indices(w.shape)])
    assert np.abs(centroid - expected).max() <= 0.25


def test_ras_marker_from_lps_dicom(tmp_path):
    # Axial DICOM: column index runs to patient left, row index to posterior, slices go up.
    # The voxel at (column 0, row 0, last slice) is the right-anterior-superior corner.
    hu = np.full((32, 32, 16), -1000.0, np.float32)
    hu[0:2, 0:2, 15] = 1000.0
    write_dicom_series(tmp_path, hu, pixel_spacing=(1.0, 1.0), slice_spacing=2.0)
    mod = CTModality({"spacing": (2, 2, 2), "size": (16, 16, 16), "min_slices": 8})
    out = mod.preprocess(mod.load(tmp_path))[0]
    assert np.unravel_index(np.argmax(out), out.shape) == (15, 15, 15)
    assert out[15, 15, 15] == pytest.approx(1.0)


def test_ras_marker_from_flipped_nifti(tmp_path):
    # x and z flipped: voxel (0, Y-1, 0) has the largest R, A and S coordinates.
    data = np.full((16, 12, 10), -1000.0, np.float32)
    data[0, 11, 0] = 1000.0
    affine = np.diag([-2.0, 2.0, -2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "flipped.nii.gz")
    mod = CTModality({"spacing": (2, 2, 2), "size": (16, 12, 10)})
    out = mod.preprocess(mod.load(tmp_path / "flipped.nii.gz"))[0]
    assert np.unravel_index(np.argmax(out), out.shape) == (15, 11, 9)


def test_center_crop_and_pad():
    arr = np.zeros((8, 40, 20), np.float32)
    spec = VolumeSpec(spacing=(1, 1, 1), size=(16, 16, 16), intensity="zscore")
    out = preprocess_volume(Volume(arr, np.eye(4)), spec)
    assert out.shape == (1, 16, 16, 16)


# --- modalities ----------------------------------------------------------------------------


def test_registered_with_defaults():
    assert modality_class("ct") is CTModality and modality_class("mri") is MRIModality
    ct, mri = CTModality(), MRIModality()
    assert ct.kind == mri.kind == "volume"
    assert ct.spec.intensity == "hu_window" and ct.spec.dicom_modalities == ("CT",)
    assert mri.spec.intensity == "zscore" and mri.spec.dicom_modalities == ("MR",)
    assert isinstance(ct.spec, CTSpec)
    assert ct.spec_hash() != mri.spec_hash()


def test_spec_validation():
    with pytest.raises(pydantic.ValidationError):
        VolumeSpec(window=(400, -1000))
    with pytest.raises(pydantic.ValidationError):
        VolumeSpec(spacing=(0, 1, 1))
    with pytest.raises(pydantic.ValidationError):
        VolumeSpec(on_inconsistent_spacing="guess")


def test_ct_modality_loads_dicom_and_rejects_too_few_slices():
    ct_small = get_testdata_file("CT_small.dcm")
    err = rejected(CTModality().load, ct_small)
    assert err.code is ReasonCode.TOO_FEW_SLICES
    vol = CTModality({"min_slices": 1}).load(ct_small)
    assert vol.array.shape == (128, 128, 1)


def test_mri_modality_accepts_nifti_and_dicom():
    mri = MRIModality({"min_slices": 1})
    assert mri.load(NIB_DATA / "anatomical.nii").array.shape == (33, 41, 25)
    assert mri.load(get_testdata_file("MR_small.dcm")).array.shape == (64, 64, 1)
    err = rejected(MRIModality({"min_slices": 1}).load, get_testdata_file("CT_small.dcm"))
    assert err.code is ReasonCode.WRONG_MODALITY


def test_missing_source(tmp_path):
    err = rejected(CTModality().load, tmp_path / "nope")
    assert err.code is ReasonCode.MISSING_FILE


def test_content_hash_tracks_bytes_and_selected_series(tmp_path):
    hu = np.zeros((6, 5, 8), np.float32)
    write_dicom_series(tmp_path / "mix" / "a", hu, series_uid="1.2.3.1")
    write_dicom_series(tmp_path / "mix" / "b", hu + 5, series_uid="1.2.3.2")
    mod = CTModality()
    whole = mod.content_hash(tmp_path / "mix")
    a = mod.content_hash(SeriesRef(tmp_path / "mix", "1.2.3.1"))
    b = mod.content_hash(SeriesRef(tmp_path / "mix", "1.2.3.2"))
    assert len({whole, a, b}) == 3
    assert a == mod.content_hash(tmp_path / "mix" / "a")  # same files, same hash
    assert a == mod.content_hash(str(tmp_path / "mix" / "a"))
    f = tmp_path / "mix" / "a" / "IM0003.dcm"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert mod.content_hash(SeriesRef(tmp_path / "mix", "1.2.3.1")) != a
    assert mod.content_hash(SeriesRef(tmp_path / "mix", "1.2.3.2")) == b


def test_collate_stacks_float32_batches():
    mod = CTModality({"size": (8, 8, 8)})
    items = [np.full((1, 8, 8, 8), i, np.float16) for i in range(3)]
    batch = mod.collate(items)
    assert set(batch) == {"x"}
    assert batch["x"].shape == (3, 1, 8, 8, 8) and batch["x"].dtype == torch.float32
    assert batch["x"][2].max().item() == 2.0
    with pytest.raises(ValueError, match="re-run ingest"):
        mod.collate([np.zeros((1, 4, 4, 4), np.float16)])


def test_encoder_uses_volume_encoders():
    ve = pytest.importorskip("modalities.volume_encoders")
    mod = CTModality({"size": (16, 16, 16)}, encoder={"name": "tiny"})
    assert CTModality.EncoderSpec is ve.VolumeEncoderConfig
    enc = mod.encoder()
    tokens = enc(**mod.collate([np.zeros((1, 16, 16, 16), np.float16)] * 2))
    assert tokens.values.shape[0] == 2 and tokens.mask.shape == tokens.values.shape[:2]


def test_anisotropic_spacing_follows_world_axes_for_sagittal_dicom(tmp_path):
    # Sagittal slices: voxel axes run A->P, S->I and R->L; the spec's spacing is per R, A, S.
    hu = np.zeros((40, 30, 20), np.float32)
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    write_dicom_series(tmp_path, hu, orientation=iop, pixel_spacing=(1.0, 1.0), slice_spacing=1.0)
    vol = CTModality({"min_slices": 8}).load(tmp_path)
    spec = VolumeSpec(spacing=(1.0, 2.0, 5.0), size=(20, 20, 6))
    out, affine = preprocess_with_affine(vol, spec)
    assert out.shape == (1, 20, 20, 6)
    np.testing.assert_allclose(np.abs(affine[:3, :3]), np.diag([1.0, 2.0, 5.0]), atol=1e-6)


def test_vit_encoder_gets_the_spec_size():
    pytest.importorskip("modalities.volume_encoders")
    enc_cfg = {"name": "vit", "patch_size": 8, "layers": 1, "heads": 2, "width": 32}
    mod = MRIModality({"size": (16, 16, 24)}, encoder=enc_cfg)
    tokens = mod.encoder()(**mod.collate([np.zeros((1, 16, 16, 24), np.float16)]))
    assert tokens.values.shape[:2] == (1, 2 * 2 * 3)


# --- geometry kept with the cache entry (issue 10) -------------------------------------------


def test_preprocess_carries_the_output_affine_and_source_orientation(tmp_path):
    hu = np.zeros((20, 16, 10), np.float32)
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: i -> P, j -> I, slices -> R
    write_dicom_series(tmp_path, hu, orientation=iop, slice_spacing=2.0)
    mod = CTModality({"min_slices": 8, "size": (8, 8, 8), "spacing": (4, 4, 4)})
    vol = mod.load(tmp_path)
    out = mod.preprocess(vol)
    _, affine = preprocess_with_affine(vol, mod.spec)
    np.testing.assert_allclose(out.cache_meta["affine"], affine, atol=1e-6)
    assert out.cache_meta["source_axcodes"] == "PIR"
    assert out.cache_meta["source_shape"] == [20, 16, 10]
    assert out.cache_meta["obliquity_degrees"] == 0.0 and not out.cache_meta["desheared"]
    # Transparent for every other caller: shape, dtype, collate.
    assert out.shape == (1, 8, 8, 8) and out.dtype == np.float16
    assert mod.collate([out])["x"].shape == (1, 1, 8, 8, 8)


def test_oblique_rotation_survives_in_the_cached_affine(tmp_path):
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    write_dicom_series(
        tmp_path,
        np.zeros((16, 16, 10), np.float32),
        orientation=(1, 0, 0, 0, c, s),
        slice_spacing=2.0,
    )
    mod = CTModality({"min_slices": 8, "size": (8, 8, 8), "spacing": (4, 4, 4)})
    meta = mod.preprocess(mod.load(tmp_path)).cache_meta
    assert meta["obliquity_degrees"] == pytest.approx(20.0, abs=0.01)
    a = np.asarray(meta["affine"])[:3, :3]
    units = a / np.linalg.norm(a, axis=0)
    # Not axis-aligned: the rotation is recorded, not dropped.
    assert np.degrees(nib.affines.obliquity(np.asarray(meta["affine"]))).max() > 19.9
    assert np.abs(units).max(axis=0).min() < 0.95


def test_version_bump_makes_old_cache_entries_unreachable():
    # Version 1 cached arrays without their affine: version 2 keys differ, so a re-ingest
    # recomputes them instead of reading them as if they had one.
    class Old(CTModality):
        version = 1

    assert CTModality.version == 2
    assert Old().cache_key("c0ffee") != CTModality().cache_key("c0ffee")


def test_nifti_checks_numbers_not_paths(tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), None)
    img.header.set_qform(np.diag([2.0, 2, 2, 1]), code=1)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][1:4] = [0.0, 2.0, -1.0]
    path = tmp_path / "Doe_Jane_MRN4711.nii"
    img.to_filename(str(path))
    err = rejected(read_nifti, path)
    assert err.code is ReasonCode.INVALID_SPACING
    assert "(0, 2, -1) mm" in err.message and "Doe" not in err.message
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 1), np.float32), np.eye(4)), one)
    assert read_nifti(one).shape == (48, 48, 1)  # min_slices defaults to 1
    err = rejected(lambda p: read_nifti(p, min_slices=8), one)
    assert err.code is ReasonCode.TOO_FEW_SLICES
