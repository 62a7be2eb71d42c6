"""De-identification removes names, IDs, dates, phones, e-mails and keeps clinical text."""

from __future__ import annotations

import pytest

from modalities.deid import deidentify, normalize_text

NOTE = """Patient: John Smith   MRN: 00123456  DOB: 03/14/1956
Seen on 2024-05-01 by Dr. Alice Jones. Call back at (555) 123-4567 or j.smith@example.org.
Mr. Smith reports chest pain since March 3, 2024; troponin elevated.
SSN 123-45-6789. Record 9876543 reviewed on 12 Jan 2023."""


@pytest.mark.parametrize(
    "phi",
    ["John Smith", "00123456", "03/14/1956", "2024-05-01", "Alice Jones", "555", "4567",
     "j.smith@example.org", "Smith", "March 3, 2024", "123-45-6789", "9876543", "12 Jan 2023"],
)
def test_phi_removed(phi: str) -> None:
    assert phi not in deidentify(NOTE)


def test_clinical_content_and_placeholders_kept() -> None:
    out = deidentify(NOTE)
    for kept in ("chest pain", "troponin elevated", "[NAME]", "[ID]", "[DATE]", "[PHONE]",
                 "[EMAIL]"):
        assert kept in out


def test_normalize_collapses_whitespace_and_controls() -> None:
    assert normalize_text("a\x07b  \t c\n\n\n\nd ") == "ab c\n\nd"
    assert normalize_text("ﬁne") == "fine"  # NFKC ligature


def test_deid_is_idempotent() -> None:
    once = deidentify(NOTE)
    assert deidentify(once) == once


def test_name_stops_at_line_end_and_propagates() -> None:
    note = "Patient: Hannah Nakamura\nMs. Nakamura reports chest pain. Nakamura's son called."
    out = deidentify(note)
    assert "Nakamura" not in out and "Hannah" not in out
    assert "reports chest pain" in out and out.count("[NAME]") >= 3
