"""Test-data generators: synthetic cohorts and known-bad inputs (``clinfuse synth``).

Not part of the runtime packages: modalities, fusion, scoring, registry and workflows never
import it at module level (the CLI's ``synth`` and ``demo`` commands import it when run).

Modules: ``clinical`` (``synth_cohort``, the cohort's layout), ``config`` (``SynthConfig``),
``cases`` (one patient), ``people`` (fake PHI, notes), ``volumes`` (CT/MRI phantoms, NIfTI),
``dicom_writer`` (the one DICOM writer), ``bad_inputs`` (planted bad inputs,
``make_bad_corpus``), ``digits`` (real handwritten + spoken digits, digit VQA:
``synth_digits``; imported on use, not here), ``make_spoken_digits`` (regenerates the
shipped clips with espeak-ng).
"""

from synth.bad_inputs import BAD_INPUT_KINDS, make_bad_corpus
from synth.clinical import SynthResult, synth_cohort
from synth.config import SynthConfig
from synth.dicom_writer import write_dicom_series

__all__ = [
    "BAD_INPUT_KINDS",
    "SynthConfig",
    "SynthResult",
    "make_bad_corpus",
    "synth_cohort",
    "write_dicom_series",
]
