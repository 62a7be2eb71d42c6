"""Where clinfuse puts a voxel in the patient, checked against SimpleITK (an independent reader).

Each input holds one bright Gaussian marker at a known patient position. The marker's
centroid in world (RAS+) coordinates must agree with SimpleITK's reading of the same files
within 0.5 voxel: for the volume as read, and for the preprocessed array through the
affine the cache stores with it. A gantry-tilted series is compared with the analytical
marker position instead (SimpleITK ignores the tilt).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from modalities.ct import CTModality
from modalities.errors import InputRejected, ReasonCode

sitk = pytest.importorskip("SimpleITK")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
MARKER_LPS = np.array([3.3, -4.6, 5.2])  # the marker's true position, DICOM patient mm
SIGMA = 2.5  # mm
COS20, SIN20 = float(np.cos(np.radians(20))), float(np.sin(np.radians(20)))


def marker(points_lps: np.ndarray) -> np.ndarray:
    d2 = ((points_lps - MARKER_LPS) ** 2).sum(-1)
    return 1000.0 * np.exp(-d2 / (2 * SIGMA**2))


def write_series(
    folder: Path,
    iop: tuple[float, ...],
    *,
    rows: int = 40,
    cols: int = 36,
    n: int = 20,
    spacing: tuple[float, float] = (1.1, 0.9),  # (row spacing, column spacing)
    step: np.ndarray | None = None,
    shuffle: bool = True,
) -> None:
    """Slices sampled from the marker at their true voxel positions; written with pydicom."""
    folder.mkdir(parents=True)
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(r, c)
    stride = normal * 2.0 if step is None else np.asarray(step, float)
    centre = (cols - 1) / 2 * spacing[1] * r + (rows - 1) / 2 * spacing[0] * c
    origin = MARKER_LPS - centre - stride * (n - 1) / 2 + np.array([0.7, -0.4, 0.3])
    jj, ii = np.mgrid[0:rows, 0:cols]  # row index j, column index i
    uid, order = generate_uid(), np.random.default_rng(0).permutation(n)
    for k in range(n):
        pos = origin + k * stride
        pts = pos + ii[..., None] * spacing[1] * r + jj[..., None] * spacing[0] * c
        px = np.round(marker(pts)).astype(np.int16)  # (rows, cols)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", uid, "1.2.3"
        ds.FrameOfReferenceUID = "1.2.3.4"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = float(np.linalg.norm(stride))
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
        ds.PixelData = px.tobytes()
        # File names in a random order: the reader must sort by position.
        ds.save_as(folder / f"S{order[k]:03d}.dcm", enforce_file_format=True)


def centroid_index(arr: np.ndarray) -> np.ndarray:
    w = np.clip(np.asarray(arr, np.float64), 0, None)
    w = np.where(w > 0.1 * w.max(), w, 0.0)
    return np.array([(w * g).sum() / w.sum() for g in np.indices(w.shape)])


def world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return (np.asarray(affine) @ np.append(index, 1.0))[:3]


def sitk_marker_ras(img) -> np.ndarray:
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    idx = centroid_index(arr)[::-1]
    lps = np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))
    return LPS_TO_RAS @ lps


def read_sitk_dicom(folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def check_against(vol, ref_ras: np.ndarray, mod: CTModality) -> None:
    """Marker centroid of the volume as read, and of the preprocessed (cached) array through
    the affine stored with it, both within 0.5 voxel of ``ref_ras``."""
    got = world(vol.affine, centroid_index(vol.array))
    assert np.linalg.norm(got - ref_ras) <= 0.5 * min(vol.spacing), (got, ref_ras)
    out = mod.preprocess(vol)
    affine = np.asarray(out.cache_meta["affine"])
    got_out = world(affine, centroid_index(out[0]))
    out_spacing = float(np.linalg.norm(affine[:3, :3], axis=0).min())
    assert np.linalg.norm(got_out - ref_ras) <= 0.5 * out_spacing, (got_out, ref_ras)


MOD = CTModality(
    {"spacing": (1.5, 1.5, 1.5), "size": (48, 48, 48), "min_slices": 8, "window": (0.0, 1000.0)}
)

DICOM_ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "prone": (-1, 0, 0, 0, -1, 0),
    "coronal": (1, 0, 0, 0, 0, -1),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "oblique_20deg": (1, 0, 0, 0, COS20, SIN20),
    "double_oblique": tuple(
        np.concatenate(
            (lambda m: (m[:, 0], m[:, 1]))(
                np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
                @ np.array([[1, 0, 0], [0, COS20, -SIN20], [0, SIN20, COS20]])
            )
        )
    ),
}


@pytest.mark.parametrize("name", sorted(DICOM_ORIENTATIONS))
def test_dicom_marker_matches_simpleitk(name: str, tmp_path: Path) -> None:
    write_series(tmp_path / name, DICOM_ORIENTATIONS[name])
    vol = MOD.load(tmp_path / name)
    ref = sitk_marker_ras(read_sitk_dicom(tmp_path / name))
    # SimpleITK's own reading is on target too (the test data are right).
    assert np.linalg.norm(ref - LPS_TO_RAS @ MARKER_LPS) <= 0.5
    check_against(vol, ref, MOD)


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    m = np.eye(3)
    a, b = [(1, 2), (0, 2), (0, 1)][axis]
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


NIFTI_LINEAR = {
    "rotated_25deg": _rot(2, 25) @ _rot(0, 10) @ np.diag([1.2, 1.0, 2.0]),
    "flipped_x_z": np.diag([-1.0, 1.1, -2.0]),
    "permuted_zxy": np.array([[0, 0, 1.0], [1.5, 0, 0], [0, 2.0, 0]]),
    "permuted_flipped": np.array([[0, -1.0, 0], [0, 0, 1.5], [-2.0, 0, 0]]),
}


@pytest.mark.parametrize("name", sorted(NIFTI_LINEAR))
@pytest.mark.parametrize("form", ["qform", "sform"])
def test_nifti_marker_matches_simpleitk(name: str, form: str, tmp_path: Path) -> None:
    lin = NIFTI_LINEAR[name]
    shape = (40, 36, 30)
    centre = lin @ ((np.array(shape) - 1) / 2)
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = LPS_TO_RAS @ MARKER_LPS - centre + np.array([0.6, -0.3, 0.4])
    idx = np.indices(shape).reshape(3, -1).T
    ras = idx @ lin.T + affine[:3, 3]
    data = marker(ras @ LPS_TO_RAS).reshape(shape).astype(np.float32)
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(affine, code=1 if form == "qform" else 0)
    img.header.set_sform(affine, code=1 if form == "sform" else 0)
    path = tmp_path / f"{name}.nii.gz"
    img.to_filename(str(path))
    vol = MOD.load(path)
    ref = sitk_marker_ras(sitk.ReadImage(str(path)))
    assert np.linalg.norm(ref - LPS_TO_RAS @ MARKER_LPS) <= 0.5
    check_against(vol, ref, MOD)


TILT_IOP = (1, 0, 0, 0, COS20, -SIN20)  # gantry tilted 20 degrees about the x axis


def test_gantry_tilt_rejected_by_default(tmp_path: Path) -> None:
    write_series(tmp_path / "t", TILT_IOP, step=np.array([0, 0, 2.0]))
    with pytest.raises(InputRejected) as info:
        MOD.load(tmp_path / "t")
    assert info.value.code is ReasonCode.GANTRY_TILT
    assert "20.0 degrees" in info.value.message


def test_gantry_tilt_desheared_lands_on_the_analytical_position(tmp_path: Path) -> None:
    # Positions step along z only while the slices are tilted: a sheared grid.
    write_series(tmp_path / "t", TILT_IOP, step=np.array([0, 0, 2.0]), n=24)
    mod = CTModality({**MOD.spec.model_dump(), "on_gantry_tilt": "deshear"})
    vol = mod.load(tmp_path / "t")
    assert vol.meta["desheared"] and vol.meta["tilt_degrees"] == pytest.approx(20.0, abs=0.1)
    a = vol.affine[:3, :3]
    # The de-sheared grid is rectangular: the slice axis is normal to the slices.
    assert abs(a[:, 2] @ a[:, 0]) < 1e-9 and abs(a[:, 2] @ a[:, 1]) < 1e-9
    truth = LPS_TO_RAS @ MARKER_LPS
    check_against(vol, truth, mod)
    # SimpleITK ignores the tilt: its reading of the same files misses by millimetres.
    off = np.linalg.norm(sitk_marker_ras(read_sitk_dicom(tmp_path / "t")) - truth)
    assert off > 3.0


def test_sheared_nifti_desheared_matches_the_analytical_position(tmp_path: Path) -> None:
    shape = (40, 36, 24)
    lin = np.array([[1.0, 0, 0], [0, COS20, 2.0 * np.tan(np.radians(20))], [0, 0, 2.0]])
    lin[1, 1] = 1.0
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = LPS_TO_RAS @ MARKER_LPS - lin @ ((np.array(shape) - 1) / 2)
    idx = np.indices(shape).reshape(3, -1).T
    data = marker((idx @ lin.T + affine[:3, 3]) @ LPS_TO_RAS).reshape(shape).astype(np.float32)
    img = nib.Nifti1Image(data, None)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(np.eye(4), code=0)
    path = tmp_path / "sheared.nii.gz"
    img.to_filename(str(path))
    with pytest.raises(InputRejected) as info:
        MOD.load(path)
    assert info.value.code is ReasonCode.GANTRY_TILT
    mod = CTModality({**MOD.spec.model_dump(), "on_gantry_tilt": "deshear"})
    check_against(mod.load(path), LPS_TO_RAS @ MARKER_LPS, mod)
