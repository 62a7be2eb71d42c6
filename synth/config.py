"""The clinical cohort's knobs and shared constants (columns, CT geometry, HU values)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

ALL_MODALITIES = ("ct", "mri", "note")
MANIFEST_COLUMNS = ["patient_id", *ALL_MODALITIES, "label"]
EXPECTED_COLUMNS = ["row", "patient_id", "modality", "expected_code", "kind"]
CT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # axial, rows along +x (L), columns along +y (P)
HU_INTERCEPT = -1024.0
TISSUE_HU = 40.0


class SynthConfig(BaseModel):
    """Knobs of the synthetic cohort (shapes in voxels, spacings in mm, rates in [0, 1])."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ct_shape: tuple[int, int, int] = (48, 48, 24)  # columns (x), rows (y), slices (z)
    ct_pixel_spacing: float = Field(1.5, gt=0)
    ct_slice_spacing: float = Field(2.5, gt=0)
    ct_noise_hu: float = Field(12.0, ge=0)
    lesion_hu: tuple[float, float] = (40.0, 90.0)  # above soft tissue
    # >= 8 mm keeps the lesion >= 2 voxels in radius on the 4 mm training grid.
    lesion_radius_mm: tuple[float, float] = (8.0, 11.0)
    mri_shape: tuple[int, int, int] = (32, 32, 32)
    mri_spacing: float = Field(2.0, gt=0)
    mri_region_contrast: float = Field(0.6, gt=0)  # relative brightness of the MRI finding
    mri_region_radius_mm: tuple[float, float] = (8.0, 12.0)
    finding_rate: float = Field(0.5, ge=0, le=1)  # prevalence of each latent finding
    label_noise: float = Field(0.03, ge=0, le=1)  # probability of flipping the vote
    ct_missing_rate: float = Field(0.0, ge=0, le=1)
    mri_missing_rate: float = Field(0.10, ge=0, le=1)
    note_missing_rate: float = Field(0.05, ge=0, le=1)
    ct_reversed_z_rate: float = Field(0.3, ge=0, le=1)  # InstanceNumber runs head to feet
    mri_flip_rate: float = Field(0.3, ge=0, le=1)  # per axis: stored flipped, affine negated
    # Which modalities are written (manifest columns follow); the rest are drawn but absent.
    modalities: tuple[str, ...] = ("ct", "mri", "note")
    label_rule: Literal["majority", "xor"] = "majority"

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if not self.modalities or set(self.modalities) - set(ALL_MODALITIES):
            raise ValueError(f"modalities must be a non-empty subset of {ALL_MODALITIES}")
        if self.label_rule == "xor" and len(self.modalities) < 2:
            raise ValueError("label_rule 'xor' needs two modalities (the first two are used)")
        return self

    def label(self, findings: dict[str, bool]) -> int:
        """The noise-free label of a patient's latent findings under ``label_rule``."""
        if self.label_rule == "xor":
            a, b = self.modalities[:2]
            return int(findings[a] != findings[b])
        return int(sum(findings.values()) >= 2)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """The one CSV dialect of every synth table: no index, LF line ends, minimal quoting."""
    df.to_csv(path, index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)

