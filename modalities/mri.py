"""MRI volumes: DICOM series (Modality MR) or NIfTI, z-scored per volume."""

from __future__ import annotations

from typing import ClassVar, Literal

from modalities.base import register_modality
from modalities.volume import VolumeModality, VolumeSpec


class MRISpec(VolumeSpec):
    """MRI defaults: z-score (MR intensities have no absolute scale); only MR series."""

    intensity: Literal["hu_window", "zscore"] = "zscore"
    dicom_modalities: tuple[str, ...] = ("MR",)


@register_modality("mri")
class MRIModality(VolumeModality):
    """Magnetic resonance: NIfTI (the usual research export) or a DICOM MR series."""

    Spec: ClassVar[type[MRISpec]] = MRISpec  # type: ignore[assignment]
