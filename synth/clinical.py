"""Synthetic clinical cohorts: CT DICOM series, MRI NIfTI volumes and notes with fake PHI.

Why: the whole workflow (index, ingest, de-identification, training, fusion) needs data
that behaves like a hospital export without being one. Each patient has three latent
binary findings, one per modality (a bright CT lesion, a bright MRI region, cardiac
wording in the note). ``label_rule`` says how they make the label: ``majority`` (the vote
of the three, a little noise: every single modality is informative and fusion is better)
or ``xor`` (the first two of ``modalities`` disagree: each alone is at chance, only a model
that combines them can learn it; the interaction cohort fusion tests use).
Headers and notes carry fake PHI (names, MRNs, dates, phone numbers) recorded in
``phi.json`` for leak ("canary") tests, and ``bad_inputs`` plants known-bad inputs whose
expected reason codes are recorded.

Output is byte-for-byte deterministic for a (seed, config): dates and UIDs derive from
the seed, never from the clock. See docs/data.md for the layout.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from modalities.errors import ReasonCode
from synth.bad_inputs import BAD_INPUT_KINDS
from synth.cases import Case, make_case
from synth.config import ALL_MODALITIES, EXPECTED_COLUMNS, MANIFEST_COLUMNS, SynthConfig, write_csv

log = logging.getLogger("clinfuse.synth")


@dataclass
class SynthResult:
    """Where the cohort landed and what it holds."""

    out: Path
    manifest: pd.DataFrame
    truth: pd.DataFrame
    expected_quarantine: pd.DataFrame
    seconds: float = 0.0

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.csv"




def _expected_rows(manifest: pd.DataFrame, cases: list[Case]) -> pd.DataFrame:
    """Expected quarantine entries, following ingest's order of checks.

    Row-level problems (duplicate ID, bad label) reject every given input of the row,
    including the good row whose ID was duplicated; otherwise each planted modality.
    """
    counts = manifest["patient_id"].value_counts()
    out = []
    for r, case in enumerate(cases):
        given = [m for m in ("ct", "mri", "note") if case.row[m]]
        if counts[case.row["patient_id"]] > 1:
            codes = dict.fromkeys(given, ReasonCode.DUPLICATE_PATIENT)
        elif "*" in case.expected:
            codes = dict.fromkeys(given, case.expected["*"])
        else:
            codes = case.expected
        out += [{"row": r, "patient_id": case.row["patient_id"], "modality": m,
                 "expected_code": str(c), "kind": case.kind or "duplicated"}
                for m, c in sorted(codes.items())]
    return pd.DataFrame(out, columns=EXPECTED_COLUMNS)


# --------------------------------------------------------------------------- cohort



def synth_cohort(
    out: Path,
    patients: int = 50,
    seed: int = 0,
    config: SynthConfig | None = None,
    bad_inputs: int = 0,
) -> SynthResult:
    """Write a synthetic cohort under ``out`` (see the module docstring and docs/data.md).

    ``bad_inputs`` adds that many extra patients, each with one planted bad input
    (kinds cycle through ``BAD_INPUT_KINDS``); ``expected_quarantine.csv`` lists the
    reason code ingest must give each of them.
    """
    t0 = time.perf_counter()
    cfg = config or SynthConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    cases = [make_case(out, cfg, seed, i, used) for i in range(patients)]
    kinds = list(BAD_INPUT_KINDS)
    for j in range(bad_inputs):
        case = make_case(out, cfg, seed, patients + j, used)
        case.kind = kinds[j % len(kinds)]
        BAD_INPUT_KINDS[case.kind](case, out, seed)
        if case.kind == "duplicate_id":
            # Reuse the first good patient's MRN (or the first row's when none is good).
            target = next((c for c in cases if not c.kind), cases[0] if cases else case)
            case.row["patient_id"] = target.row["patient_id"]
        cases.append(case)
    for case in cases:
        case.truth["planted"] = case.kind
        case.truth["manifest_patient_id"] = case.row["patient_id"]

    columns = [c for c in MANIFEST_COLUMNS if c not in ALL_MODALITIES or c in cfg.modalities]
    manifest = pd.DataFrame([c.row for c in cases], columns=columns)
    truth = pd.DataFrame([c.truth for c in cases])
    expected = _expected_rows(manifest, cases)
    write_csv(manifest, out / "manifest.csv")
    write_csv(truth, out / "truth.csv")
    write_csv(expected, out / "expected_quarantine.csv")
    _write_phi(out / "phi.json", cases)
    seconds = time.perf_counter() - t0
    log.info("synthesized %d patients (+%d planted bad inputs) in %.1fs",
             patients, bad_inputs, seconds)
    return SynthResult(out, manifest, truth, expected, seconds)


def _write_phi(path: Path, cases: list[Case]) -> None:
    """Every fake PHI string exactly as written into a file, per kind and per patient."""
    kinds = ["names", "dicom_names", "mrns", "birth_dates", "visit_dates", "dicom_dates",
             "phones", "institutions"]
    per_patient = [
        {"case": c.name, "patient_id": c.person.mrn,
         **{k: sorted(c.person.written.get(k, ())) for k in kinds}}
        for c in cases
    ]
    flat = {k: sorted({v for c in cases for v in c.person.written.get(k, ())}) for k in kinds}
    path.write_text(json.dumps({**flat, "patients": per_patient}, indent=1) + "\n",
                    encoding="utf-8")


