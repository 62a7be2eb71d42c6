"""CT volumes: DICOM series (Modality CT) or NIfTI, HU window mapped to [0, 1]."""

from __future__ import annotations

from typing import ClassVar, Literal

from modalities.base import register_modality
from modalities.volume import VolumeModality, VolumeSpec


class CTSpec(VolumeSpec):
    """CT defaults: HU window (-1000, 400) covers air to dense soft tissue; only CT series."""

    intensity: Literal["hu_window", "zscore"] = "hu_window"
    window: tuple[float, float] = (-1000.0, 400.0)
    dicom_modalities: tuple[str, ...] = ("CT",)


@register_modality("ct")
class CTModality(VolumeModality):
    """Computed tomography: intensities are Hounsfield units, so a fixed window is meaningful."""

    Spec: ClassVar[type[CTSpec]] = CTSpec  # type: ignore[assignment]
