"""3D volumes (CT, MRI): spec, NIfTI reading, MONAI preprocessing, and the shared modality base.

``load`` gives a validated ``Volume`` (float32 (X, Y, Z) + RAS affine) from a NIfTI file or a
DICOM series (``modalities.dicom``). ``preprocess`` derives everything from the spec:
reorient to RAS, resample to ``spacing``, map intensities (HU window or z-score), centre
crop/pad to ``size``, store as float16 (1, X, Y, Z).

Resampling uses MONAI's ``Resize`` (area pooling where an axis shrinks, trilinear where it
grows) with the output size computed from the spacing ratio, instead of ``Spacing``'s
grid_sample, which is several times slower on CPU; ``Resize`` updates the affine, so the
result's geometry stays right.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from modalities.base import CachedValue, EncoderConfig, Modality, Spec
from modalities.dicom import (
    DEFAULT_DECODE_WORKERS,
    as_source,
    quiet_dicom_logs,
    read_dicom_series,
)
from modalities.dicom_geometry import (
    COSINE_TOLERANCE,
    MAX_VOXELS,
    TiltPolicy,
    Volume,
    apply_tilt_policy,
    check_spacing,
    check_voxel_count,
)
from modalities.errors import InputRejected, ReasonCode
from modalities.paths import SeriesRef, source_files

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class VolumeSpec(Spec):
    """How a volume is preprocessed (hashed into cache keys). Axes are RAS: X, Y, Z."""

    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    size: tuple[int, int, int] = (64, 64, 64)
    intensity: Literal["hu_window", "zscore"] = "hu_window"
    window: tuple[float, float] = (-1000.0, 400.0)
    min_slices: int = Field(8, ge=1)
    spacing_tolerance: float = Field(0.05, gt=0.0, lt=0.5)
    on_inconsistent_spacing: Literal["reject", "resample"] = "reject"
    # A gantry-tilted (sheared) series is refused unless asked to de-shear it (docs/volumes.md).
    on_gantry_tilt: Literal["reject", "deshear"] = "reject"
    # Headers declaring more voxels than this are refused before anything is allocated.
    max_voxels: int = Field(MAX_VOXELS, ge=1)
    dicom_modalities: tuple[str, ...] = ("CT",)

    @model_validator(mode="after")
    def _check(self) -> VolumeSpec:
        if any(s <= 0 for s in self.spacing):
            raise ValueError("spacing must be positive (mm)")
        if any(n < 1 for n in self.size):
            raise ValueError("size must be at least 1 voxel per axis")
        if self.window[0] >= self.window[1]:
            raise ValueError("window must be (low, high) with low < high")
        return self


def _nibabel() -> Any:
    import nibabel

    return nibabel


def _nifti_error(exc: Exception) -> InputRejected:
    text = str(exc)
    if isinstance(exc, EOFError) or ("Expected" in text and "bytes" in text):
        return InputRejected(
            ReasonCode.TRUNCATED_FILE,
            "the NIfTI file ends before the image data its header declares; the file was cut "
            "short: re-send the complete file",
        )
    return InputRejected(
        ReasonCode.UNREADABLE,
        f"the NIfTI file cannot be read ({type(exc).__name__}); check that it is a "
        "complete .nii/.nii.gz file",
    )


def _raw_nifti_header(path: Path, header_class: type) -> Any:
    """The header as stored: nibabel's loader silently "fixes" pixdim 0 to 1 and -2 to 2."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as fh:
        return header_class.from_fileobj(fh, check=False)


def _nifti_affine(img: Any, raw: Any) -> np.ndarray:
    """The affine nibabel would use (sform, else qform), after checking it is trustworthy.

    No qform and no sform means nibabel guesses an orientation from pixdim alone: refused.
    A qform with pixdim <= 0 or non-finite is refused (nibabel would make it 1 mm or abs()).
    """
    sform_code, qform_code = int(raw["sform_code"]), int(raw["qform_code"])
    if sform_code <= 0 and qform_code <= 0:
        raise InputRejected(
            ReasonCode.INVALID_ORIENTATION,
            "the NIfTI header has neither a qform nor an sform (both codes are 0), so the "
            "image's orientation in the patient is unknown; re-convert it from DICOM (e.g. "
            "dcm2niix) or set the qform/sform",
        )
    if sform_code <= 0:
        check_spacing(np.asarray(raw["pixdim"][1:4], dtype=np.float64), "the NIfTI pixdim")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise InputRejected(
            ReasonCode.INVALID_ORIENTATION,
            "the NIfTI affine holds NaN or infinite values; fix the qform/sform",
        )
    cols = affine[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    check_spacing(norms, "the voxel size of the NIfTI affine")
    units = cols / norms
    cos = abs(float(units[:, 0] @ units[:, 1]))
    det = abs(float(np.linalg.det(units)))
    if cos > COSINE_TOLERANCE or det < 1e-3:
        raise InputRejected(
            ReasonCode.INVALID_ORIENTATION,
            "the NIfTI affine is singular or its first two axes are not orthogonal, so the "
            "voxels cannot be placed on a grid; fix the qform/sform",
        )
    return affine


def read_nifti(
    path: Path | str,
    *,
    min_slices: int = 1,
    on_gantry_tilt: TiltPolicy = "reject",
    max_voxels: int = MAX_VOXELS,
) -> Volume:
    """Read a 3D NIfTI file (a 4D/5D file with one volume is accepted) into a ``Volume``.

    The header is checked before the voxels are read: dimensions, voxel count, slice count
    (``min_slices`` along every axis), the qform/sform and a sheared slice axis (gantry tilt:
    rejected or de-sheared by ``on_gantry_tilt``).
    """
    nib = _nibabel()
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise InputRejected(
                ReasonCode.TRUNCATED_FILE, "the NIfTI file is empty (0 bytes); re-send it"
            )
        # nibabel logs the header "fixes" it applies (pixdim 0 -> 1); they are checked below
        # from the raw header instead, so its log is muted for the load.
        nib_log = logging.getLogger("nibabel.global")
        level = nib_log.level
        nib_log.setLevel(logging.ERROR)
        try:
            img = nib.load(str(path))
        finally:
            nib_log.setLevel(level)
        raw = _raw_nifti_header(path, type(img.header))
    except FileNotFoundError:
        raise InputRejected(
            ReasonCode.MISSING_FILE, "file does not exist; fix the manifest entry"
        ) from None
    except InputRejected:
        raise
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors...
        raise _nifti_error(exc) from None
    shape = tuple(int(n) for n in img.shape)
    extra = shape[3:]
    if any(n != 1 for n in extra):
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            f"the NIfTI image has {len(shape)} dimensions (shape {shape}); only 3D volumes "
            "are supported: extract one 3D volume (e.g. fslroi) first",
        )
    shape3 = (*shape, 1, 1, 1)[:3]  # a 2D image is one slice
    check_voxel_count(shape3, max_voxels)
    if min(shape3) < min_slices:
        raise InputRejected(
            ReasonCode.TOO_FEW_SLICES,
            f"the NIfTI volume is {' x '.join(map(str, shape3))} voxels: fewer than "
            f"{min_slices} slices along one axis; pick the volumetric image, or lower "
            "min_slices in the spec",
        )
    affine = _nifti_affine(img, raw)
    if not path.name.lower().endswith(".gz"):
        need = int(raw.get_data_offset()) + int(np.prod(shape)) * raw.get_data_dtype().itemsize
        if path.stat().st_size < need:
            raise InputRejected(
                ReasonCode.TRUNCATED_FILE,
                f"the NIfTI file holds {path.stat().st_size} bytes but its header declares "
                f"{need}; the file was cut short: re-send the complete file",
            )
    try:
        data = np.asanyarray(img.dataobj, dtype=np.float32).reshape(shape3, order="F")
    except Exception as exc:
        raise _nifti_error(exc) from None
    if not np.isfinite(data).all():
        raise InputRejected(
            ReasonCode.NON_FINITE_VALUES,
            "the image holds NaN or infinite values; fill them (e.g. with 0) before ingest",
        )
    # Fortran order, as nibabel gives it
    return apply_tilt_policy(Volume(array=data, affine=affine), on_gantry_tilt)


def _monai() -> Any:
    """Import MONAI lazily (~7 s) with its codec noise silenced."""
    quiet_dicom_logs()
    import monai.data
    import monai.transforms

    return monai


def target_shape(
    shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]
) -> tuple[int, ...]:
    """Voxel counts that cover the same extent at the ``target`` spacing."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def _spacing(affine: torch.Tensor | np.ndarray) -> tuple[float, ...]:
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(x) for x in np.linalg.norm(a[:3, :3], axis=0))


def voxel_axis_targets(
    affine: torch.Tensor | np.ndarray, target: tuple[float, float, float]
) -> tuple[float, ...]:
    """``target`` (given along R, A, S) reordered to the voxel axes nearest those directions."""
    world_axis = _nibabel().orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    return tuple(float(target[int(ax)]) for ax in world_axis[:, 0])


def resample_to_spacing(img: Any, target: tuple[float, float, float]) -> Any:
    """Resize a channel-first MetaTensor to ``target`` (R, A, S) spacing: area down, trilinear up.

    Axes are handled in two passes so an axis that shrinks is averaged (no aliasing) while
    one that grows is interpolated; each ``Resize`` updates the affine. The image may be in
    any orientation: the target spacing is matched to voxel axes by direction.
    """
    mt = _monai().transforms
    shape = tuple(img.shape[1:])
    new = target_shape(shape, _spacing(img.affine), voxel_axis_targets(img.affine, target))
    down = tuple(min(n, m) for n, m in zip(shape, new, strict=True))
    if down != shape:
        img = mt.Resize(spatial_size=down, mode="area")(img)
    if down != new:
        img = mt.Resize(spatial_size=new, mode="trilinear", align_corners=False)(img)
    return img


def _meta_tensor(vol: Volume) -> Any:
    """Wrap a Volume as a channel-first MetaTensor without copying a Fortran-ordered array.

    A Fortran (X, Y, Z) array is the same memory as a C (Z, Y, X) one; using that view with
    the affine's columns swapped keeps the geometry and gives torch a contiguous tensor.
    """
    monai = _monai()
    arr, affine = vol.array, np.asarray(vol.affine, dtype=np.float64)
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        arr, affine = arr.T, affine[:, [2, 1, 0, 3]]
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return monai.data.MetaTensor(torch.from_numpy(arr)[None], affine=torch.from_numpy(affine))


def preprocess_with_affine(vol: Volume, spec: VolumeSpec) -> tuple[np.ndarray, np.ndarray]:
    """Volume -> (float16 (1, *spec.size), its 4x4 RAS affine): the whole preprocessing.

    Resampling to the spec spacing, RAS orientation, intensity map, centre crop/pad.
    Resampling runs first, on the array's native contiguous layout: per-axis spacing does
    not depend on orientation, and ``Orientation`` (a permute/flip) is then cheap on the
    small result; resizing a permuted full-size view is 2-3x slower.
    """
    mt = _monai().transforms
    img = _meta_tensor(vol)
    img = resample_to_spacing(img, spec.spacing)
    # Labels spelled out: our affines are RAS (MONAI warns when it has to guess).
    img = mt.Orientation(axcodes="RAS", labels=RAS_LABELS)(img)
    if spec.intensity == "hu_window":
        lo, hi = spec.window
        img = mt.ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img)
    else:
        img = mt.NormalizeIntensity()(img)
    # Constant 0 padding: air (window low) after HU scaling, the mean after z-scoring.
    img = mt.ResizeWithPadOrCrop(spatial_size=spec.size)(img)
    array = img.as_tensor().detach().cpu().numpy().astype(np.float16)
    return array, np.asarray(img.affine, dtype=np.float64)


class GeoArray(np.ndarray):
    """A preprocessed array that carries its geometry in ``cache_meta`` (a JSON-able dict).

    ``TensorCache.put`` stores ``cache_meta`` beside the array (``<key>.meta.json``), so the
    output affine and the source orientation survive into training and the explanation
    overlays. It is an ndarray subclass so every other caller keeps working unchanged.
    """

    cache_meta: dict[str, Any] | None = None  # class default: unpickled copies lack it

    def __array_finalize__(self, obj: Any) -> None:
        self.cache_meta = getattr(obj, "cache_meta", None)


def geometry_meta(vol: Volume, out_affine: np.ndarray) -> dict[str, Any]:
    """What the cache keeps about a volume's geometry (numbers and axis codes only, no PHI).

    ``affine``: voxel index of the cached (1, X, Y, Z) array -> RAS+ mm (rotation kept for
    oblique sources); ``source_*``: the volume as read (before resampling/reorientation).
    """
    nib = _nibabel()
    src = np.asarray(vol.affine, dtype=np.float64)
    return {
        "affine": np.asarray(out_affine, dtype=np.float64).round(6).tolist(),
        "source_affine": src.round(6).tolist(),
        "source_axcodes": "".join(nib.orientations.aff2axcodes(src)),
        "source_shape": [int(n) for n in vol.array.shape],
        "obliquity_degrees": round(float(np.degrees(nib.affines.obliquity(src)).max()), 3),
        "tilt_degrees": float(vol.meta.get("tilt_degrees", 0.0)),
        "desheared": bool(vol.meta.get("desheared", False)),
    }


def preprocess_volume(vol: Volume, spec: VolumeSpec) -> GeoArray:
    """Volume -> float16 array (1, *spec.size), what the tensor cache stores, plus geometry."""
    array, affine = preprocess_with_affine(vol, spec)
    out = array.view(GeoArray)
    out.cache_meta = geometry_meta(vol, affine)
    return out


def _volume_encoder_module() -> Any | None:
    """``modalities.volume_encoders`` if it exists (it is optional at import time)."""
    try:
        return importlib.import_module("modalities.volume_encoders")
    except ModuleNotFoundError as exc:
        if exc.name != "modalities.volume_encoders":
            raise  # a missing dependency inside it is a real error
        return None


def _encoder_spec() -> type[EncoderConfig]:
    mod = _volume_encoder_module()
    return mod.VolumeEncoderConfig if mod is not None else EncoderConfig


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file by its suffix."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _hash_files(files: list[Path]) -> str:
    h = hashlib.blake2b(digest_size=20)
    for f in files:
        # Length-prefix each file so (AB, C) and (A, BC) differ; names are left out on
        # purpose: renaming files does not change the image.
        h.update(f"{f.stat().st_size}\n".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


class VolumeModality(Modality):
    """Shared base of CT and MRI: NIfTI or DICOM in, float16 (1, X, Y, Z) out."""

    kind: ClassVar[str] = "volume"
    # 2: the cache keeps each volume's affine (<key>.meta.json) and the geometry checks of
    # issue 10 (tilt, spacing, orientation) changed what is accepted; old entries recompute.
    version: ClassVar[int] = 2
    Spec: ClassVar[type[VolumeSpec]] = VolumeSpec  # type: ignore[assignment]
    EncoderSpec: ClassVar[type[EncoderConfig]] = _encoder_spec()
    decode_workers: ClassVar[int] = DEFAULT_DECODE_WORKERS

    spec: VolumeSpec

    def content_hash(self, source: Path | str | SeriesRef) -> str:  # type: ignore[override]
        """blake2b over the bytes of the input's files (only the selected series' files)."""
        src = as_source(source)
        if isinstance(src, SeriesRef):
            from modalities.dicom import series_files

            files = series_files(src)
        else:
            files = source_files(src)
        return _hash_files(files)

    def load(self, source: Path | str | SeriesRef) -> Volume:  # type: ignore[override]
        """Read and validate a NIfTI file (by suffix) or a DICOM series."""
        src = as_source(source)
        s = self.spec
        if isinstance(src, Path) and src.is_file() and is_nifti(src):
            return read_nifti(
                src,
                min_slices=s.min_slices,
                on_gantry_tilt=s.on_gantry_tilt,
                max_voxels=s.max_voxels,
            )
        return read_dicom_series(
            src,
            modalities=s.dicom_modalities,
            min_slices=s.min_slices,
            spacing_tolerance=s.spacing_tolerance,
            on_inconsistent_spacing=s.on_inconsistent_spacing,
            on_gantry_tilt=s.on_gantry_tilt,
            max_voxels=s.max_voxels,
            workers=self.decode_workers,
        )

    def preprocess(self, raw: Volume) -> CachedValue:  # type: ignore[override]
        return preprocess_volume(raw, self.spec)

    def collate(self, items: list[CachedValue]) -> dict[str, torch.Tensor]:
        """Stack cached (1, X, Y, Z) arrays into ``{"x": float32 (B, 1, X, Y, Z)}``."""
        if not items:
            raise ValueError("collate needs at least one item")
        arrays = []
        for it in items:
            if not isinstance(it, np.ndarray) or it.shape != (1, *self.spec.size):
                raise ValueError(
                    f"expected cached arrays of shape (1, {', '.join(map(str, self.spec.size))})"
                    "; the cache was written with another spec: re-run ingest"
                )
            arrays.append(np.asarray(it))
        return {"x": torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False))}

    def encoder(self) -> nn.Module:
        mod = _volume_encoder_module()
        if mod is None:
            raise RuntimeError("modalities.volume_encoders is missing; the install is broken")
        # The spec's size tells size-dependent encoders (ViT) what they will be fed.
        return mod.build_volume_encoder(
            self.encoder_config, in_channels=1, input_size=tuple(self.spec.size)
        )
