"""One synthetic patient: latent findings, label, and the files of each present modality.

Each patient draws from its own child random stream (seed, index), and every draw happens
whether or not the modality is written, so adding bad inputs or dropping a modality never
changes the other patients' bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modalities.errors import ReasonCode
from synth.config import ALL_MODALITIES, CT_ORIENTATION, SynthConfig
from synth.dicom_writer import ds_text
from synth.people import Person, fake_person, note_text
from synth.volumes import (
    CtGeometry,
    ct_volume,
    mri_volume,
    series_uids,
    write_ct_series,
    write_nifti,
)


@dataclass
class Case:
    """One synthesized patient: where its files are and what was planted."""

    idx: int
    name: str  # case_0001
    cfg: SynthConfig
    person: Person
    rng: np.random.Generator
    findings: dict[str, bool]
    label: int
    row: dict[str, str]
    truth: dict[str, Any]
    ct_geo: CtGeometry | None = None
    ct_vol: np.ndarray | None = None
    ct_files: list[Path] = field(default_factory=list)
    kind: str = ""  # planted bad-input kind, "" for good patients
    expected: dict[str, ReasonCode] = field(default_factory=dict)


def make_case(out: Path, cfg: SynthConfig, seed: int, idx: int, used: set[str]) -> Case:
    """Draw patient ``idx`` and write its present modalities under ``out/case_NNNN``."""
    # One child stream per patient: adding bad inputs never changes the good patients.
    rng = np.random.default_rng(np.random.SeedSequence([seed, idx]))
    person = fake_person(rng, used)
    findings = {m: bool(rng.random() < cfg.finding_rate) for m in ("ct", "mri", "note")}
    flipped = bool(rng.random() < cfg.label_noise)
    label = cfg.label(findings) ^ int(flipped)
    # Drawn for every modality, written or not, so the random streams stay aligned.
    present = {m: bool(rng.random() >= getattr(cfg, f"{m}_missing_rate")) and m in cfg.modalities
               for m in ALL_MODALITIES}
    if not any(present.values()):
        present[cfg.modalities[0]] = True  # a patient with nothing to read is no patient
    name = f"case_{idx + 1:04d}"
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[str, Any] = {
        "patient_id": person.mrn, "case": name, "label": label, "label_flipped": flipped,
        **{f"{m}_finding": int(v) for m, v in findings.items()},
        **{f"{m}_present": v for m, v in present.items()},
    }
    row = {"patient_id": person.mrn, "ct": "", "mri": "", "note": "", "label": str(label)}
    case = Case(idx, name, cfg, person, rng, findings, label, row, truth)

    # The CT geometry is drawn even when the CT is absent so streams stay aligned.
    nx, ny, nz = cfg.ct_shape
    ps, dz = cfg.ct_pixel_spacing, cfg.ct_slice_spacing
    origin = (round(-(nx - 1) / 2 * ps + rng.uniform(-20, 20) * 4) / 4,
              round(-(ny - 1) / 2 * ps + rng.uniform(-20, 20) * 4) / 4,
              round(rng.uniform(-200, 100) * 4) / 4)
    geo = CtGeometry(origin, ps, dz, (nx, ny, nz), bool(rng.random() < cfg.ct_reversed_z_rate))
    vol, info = ct_volume(cfg, geo, findings["ct"], rng)
    case.ct_geo, case.ct_vol = geo, vol
    truth.update(info)
    truth.update(ct_origin_x=origin[0], ct_origin_y=origin[1], ct_origin_z=origin[2],
                 ct_pixel_spacing=ps, ct_slice_spacing=dz, ct_columns=nx, ct_rows=ny,
                 ct_slices=nz, ct_reversed_z=geo.reversed_z,
                 ct_orientation="\\".join(ds_text(v) for v in CT_ORIENTATION))
    if present["ct"]:
        case.ct_files = write_ct_series(folder / "ct", vol, geo, person,
                                        series_uids(seed, name), rng)
        row["ct"] = f"{name}/ct"

    mri, minfo = mri_volume(cfg, findings["mri"], rng)
    truth.update(minfo)
    if present["mri"]:
        truth.update(write_nifti(folder / "mri.nii.gz", mri, cfg, rng))
        row["mri"] = f"{name}/mri.nii.gz"

    before = {k: set(v) for k, v in person.written.items()}
    text = note_text(person, findings["note"], rng)  # drawn either way: streams stay aligned
    if not present["note"]:
        person.written = before  # phi.json lists only what reached a file
    else:
        (folder / "note.txt").write_text(text, encoding="utf-8")
        row["note"] = f"{name}/note.txt"
    return case


