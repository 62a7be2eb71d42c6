"""De-identification: every Safe Harbor class removed, clinical text kept, linear-time rules.

The corpus tests score the de-identifier on annotated notes (``deid_corpus``): 120 generated
notes plus two hand-written held-out sets. They fail if recall, per-class recall or
clinical-term preservation drops below the targets in ``docs/deid.md``.
"""

from __future__ import annotations

import itertools
import random
import re
import sre_constants
import sre_parse

import pytest

from modalities import deid_names, deid_rules
from modalities.deid import backends, deidentify, find_phi, normalize_text, register_backend
from modalities.errors import UnknownNameError
from tests.modalities.deid_corpus import CLASSES, Score, generated, heldout, score

NOTE = """Patient: John Smith   MRN: 00123456  DOB: 03/14/1956
Seen on 2024-05-01 by Dr. Alice Jones. Call back at (555) 123-4567 or j.smith@example.org.
Mr. Smith reports chest pain since March 3, 2024; troponin elevated.
SSN 123-45-6789. Record 9876543 reviewed on 12 Jan 2023."""

RECALL_OVERALL, RECALL_CLASS, PRESERVATION, PRECISION = 0.97, 0.95, 0.97, 0.90


@pytest.mark.parametrize(
    "phi",
    ["John Smith", "00123456", "03/14/1956", "2024-05-01", "Alice Jones", "555", "4567",
     "j.smith@example.org", "Smith", "March 3, 2024", "123-45-6789", "9876543", "12 Jan 2023"],
)  # fmt: skip
def test_phi_removed(phi: str) -> None:
    assert phi not in deidentify(NOTE)


def test_clinical_content_and_placeholders_kept() -> None:
    out = deidentify(NOTE)
    for kept in ("chest pain", "troponin elevated", "[NAME]", "[ID]", "[DATE]", "[PHONE]",
                 "[EMAIL]"):  # fmt: skip
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


# The examples the issue reported surviving, each with what must go and what must stay.
ISSUE_CASES = [
    ("Patient Name: Nguyen, Thi Hoa", ["Nguyen", "Thi", "Hoa"], ["Patient Name:"]),
    ("Electronically signed by: Jane Q. Whitfield, MD", ["Jane", "Whitfield"], ["MD"]),
    ("ELECTRONICALLY SIGNED BY: JANE Q. WHITFIELD, MD", ["JANE", "WHITFIELD"], ["MD"]),
    ("electronically signed by: jane whitfield, md", ["jane", "whitfield"], []),
    ("pt's daughter Maria is at bedside", ["Maria"], ["daughter", "bedside"]),
    ("PT'S DAUGHTER MARIA IS AT BEDSIDE", ["MARIA"], ["DAUGHTER"]),
    ("Admitted 04-Mar-2024 after a fall", ["04", "Mar", "2024"], ["Admitted"]),
    ("Symptoms since March 4th", ["March", "4th"], ["Symptoms"]),
    ("Follow up on 3/4 in clinic", ["3/4"], ["Follow up"]),
    ("Med Rec #: A-88213", ["88213"], ["Med Rec"]),
    ("SSN 512 44 9081", ["512", "9081"], []),
    ("A 92-year-old woman", ["92"], ["woman"]),
    ("Lives at 512 Oak Hollow Rd, Eugene, OR 97402", ["512", "Oak", "Eugene", "97402"], []),
    ("Transferred from Mercy General Hospital", ["Mercy"], ["Transferred"]),
    ("See https://mychart.example.org/p/88213, www.familyblog.com", ["mychart", "familyblog"], []),
    ("Pacemaker serial no. PJN612345S", ["PJN612345S"], ["Pacemaker"]),
    ("Remote login from 192.168.10.24", ["192.168"], []),
    ("Fax: 617.555.0142", ["617", "0142"], []),
    ("Driver's license D1234567", ["D1234567"], []),
    ("Acct #: 9982-11-003", ["9982"], []),
    ("Mother Ngozi and grandmother (ninety-four years old) visited", ["Ngozi", "ninety"], []),
]  # fmt: skip


@pytest.mark.parametrize(("text", "gone", "kept"), ISSUE_CASES)
def test_issue_examples(text: str, gone: list[str], kept: list[str]) -> None:
    out = deidentify(text)
    for word in gone:
        assert word not in out, (text, out)
    for word in kept:
        assert word in out, (text, out)


CLINICAL = [
    "Graves disease", "Parkinson disease", "Parkinson's disease", "Down syndrome",
    "Wilson's disease", "Crohn's disease", "Hodgkin lymphoma", "Alzheimer's dementia",
    "Cushing syndrome", "Addison's disease", "Bell's palsy", "Hashimoto thyroiditis",
    "Guillain-Barre syndrome", "Babinski sign", "Foley catheter", "Kawasaki disease",
    "Marfan syndrome", "Huntington disease", "Brown-Sequard syndrome", "L4-L5", "C5-C6",
    "L5-S1", "T12", "metoprolol 25 mg", "lisinopril 10 mg daily", "0.9% NS", "1/2 tab",
    "BP 120/80", "HR 72", "SpO2 98%", "pain 7/10", "5/5 strength", "Hgb 11.2", "A1c 7.2%",
    "INR 2.3", "platelets 250,000", "EF 55%", "COVID-19", "HbA1c", "E11.9", "BRCA1",
    "67-year-old", "45 yo", "may resume", "will follow up", "Emergency Department",
    "Eliquis 5 mg", "Lasix", "APGAR 8/9", "NYHA class II", "stage IIIA", "CN II-XII",
    "Kerley B lines", "Child-Pugh class A", "Wagner grade 2", "Gleason score 7",
    "Hunt and Hess grade 3", "Cockcroft-Gault equation", "Mallory-Weiss tear",
    "male with a history of Type 2 Diabetes Mellitus", "Follow up with Cardiology Clinic",
    "Metformin 1000 mg BID", "Atorvastatin 80 mg", "Humira 40 mg", "Romberg negative",
]  # fmt: skip


@pytest.mark.parametrize("term", CLINICAL)
def test_clinical_terms_kept(term: str) -> None:
    assert term in deidentify(f"Assessment: {term} noted today.")


def test_eponym_surname_as_a_name_is_still_removed() -> None:
    out = deidentify("Mr. Graves has Graves disease; Dr. Down reviewed.")
    assert out == "Mr. [NAME] has Graves disease; Dr. [NAME] reviewed."


def test_find_phi_spans_are_sorted_disjoint_and_typed() -> None:
    spans = find_phi(NOTE)
    assert spans == sorted(spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert {cls for *_, cls in spans} <= {"NAME", "DATE", "ID", "PHONE", "EMAIL", "SSN"}


def test_backends_are_pluggable_and_unknown_names_listed() -> None:
    assert "rules" in backends()
    register_backend("upper-test", str.upper)
    assert deidentify("a  b", backend="upper-test") == "A B"
    with pytest.raises(UnknownNameError, match="rules"):
        deidentify("x", backend="nope")


# ---- corpus ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scores() -> dict[str, Score]:
    return {
        "generated": score(deidentify, generated()),
        "heldout": score(deidentify, heldout("heldout")),
        "heldout_b": score(deidentify, heldout("heldout_b")),
    }


def test_corpus_sizes(scores: dict[str, Score]) -> None:
    assert scores["generated"].notes >= 100
    assert all(scores["generated"].total.get(c, 0) >= 30 for c in CLASSES)
    assert scores["heldout"].notes + scores["heldout_b"].notes >= 40


@pytest.mark.parametrize("name", ["generated", "heldout", "heldout_b"])
def test_recall_precision_preservation(scores: dict[str, Score], name: str) -> None:
    s = scores[name]
    assert s.recall() >= RECALL_OVERALL, (s.recall(), s.leaks[:10])
    assert s.precision >= PRECISION, s.precision
    assert s.preservation >= PRESERVATION, (s.preservation, s.lost_terms)


@pytest.mark.parametrize("cls", CLASSES)
def test_recall_per_class(scores: dict[str, Score], cls: str) -> None:
    found = sum(s.found.get(cls, 0) for s in scores.values())
    total = sum(s.total.get(cls, 0) for s in scores.values())
    assert found / total >= RECALL_CLASS, (cls, found, total)


# ---- linear time ----------------------------------------------------------------------


def _patterns() -> list[re.Pattern[str]]:
    pats: list[re.Pattern[str]] = []
    for mod in (deid_rules, deid_names):
        for value in vars(mod).values():
            if isinstance(value, re.Pattern):
                pats.append(value)
            elif isinstance(value, list) and value and isinstance(value[0], re.Pattern):
                pats.extend(value)
    return pats


def _subpatterns(op: object, av: object) -> list[object]:
    """The nested sub-patterns of one parsed regex node."""
    if op == sre_constants.SUBPATTERN:
        return [av[-1]]  # type: ignore[index]
    if op == sre_constants.BRANCH:
        return list(av[1])  # type: ignore[index]
    if op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
        return [av[1]]  # type: ignore[index]
    return []


def _nested_unbounded(tree: object, inside: bool = False) -> bool:
    """True when an unbounded repeat sits inside another unbounded repeat."""
    for op, av in tree.data if hasattr(tree, "data") else tree:  # type: ignore[attr-defined]
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
            _, hi, sub = av
            unbounded = hi == sre_constants.MAXREPEAT
            if (unbounded and inside) or _nested_unbounded(sub, inside or unbounded):
                return True
        elif any(_nested_unbounded(sub, inside) for sub in _subpatterns(op, av)):
            return True
    return False


def test_no_pattern_nests_unbounded_repeats() -> None:
    """Catastrophic backtracking needs an unbounded repeat inside another ((x+)+); no rule
    has one (the old e-mail rule did). Restarting from every position of a long token, the
    old rule's other quadratic cost, is cut by look-behind anchors: the 1 MB tests run it."""
    pats = _patterns()
    assert len(pats) > 30
    bad = [p.pattern[:60] for p in pats if _nested_unbounded(sre_parse.parse(p.pattern, p.flags))]
    assert not bad


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        "a" * 1_000_000,
        "x" * 999_000 + "@example.org",  # the issue's quadratic e-mail case, 12x longer
        "1/" * 500_000,
        "Aa " * 333_333,
    ],
    ids=["one-token", "email-token", "slashes", "capitalised-words"],
)
def test_one_megabyte_adversarial_notes_finish(text: str) -> None:
    """Runs 1 MB notes through every rule; timings are in bench/deid.py, not asserted."""
    out = deidentify(text)
    assert len(out) <= len(text)


@pytest.mark.slow
def test_one_megabyte_of_random_words_finishes() -> None:
    rng = random.Random(0)
    words = ["pain", "Smith", "March", "denies", "12", "Dr.", "L4-L5", "BP", "120/80", "on"]
    text = " ".join(rng.choice(words) for _ in range(200_000))[:1_000_000]
    out = deidentify(text)
    assert "Smith" not in out and "L4-L5" in out


def test_synth_notes_lose_their_phi_and_keep_their_findings() -> None:
    """The notes ``clinfuse synth`` writes: every planted identifier goes, every sentence
    that carries the label stays."""
    import numpy as np

    from synth.people import fake_person, note_text

    rng = np.random.default_rng(0)
    used: set[str] = set()
    for i in range(100):
        person = fake_person(rng, used)
        text = note_text(person, bool(i % 2), rng)
        out = deidentify(text)
        for phi in (person.first, person.last, person.mrn, person.phone, person.institution):
            assert phi not in out
        narrative = text.split("\n\n", 1)[1].splitlines()[0]
        assert narrative.split("presenting with ", 1)[1] in out
