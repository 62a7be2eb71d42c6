"""Annotated de-identification corpus and the scorer that measures a de-identifier on it.

Notes are written in a small markup: ``[[CLASS|text]]`` marks a PHI span of a HIPAA Safe
Harbor class and ``{{text}}`` marks a clinical term that must survive. Two sets:

- ``generated``: :mod:`.generate` fills many templates with varied formats (seeded);
- ``heldout``: ``heldout.txt``, notes written by hand in other styles, never used to tune.

Scoring matches each note's text to its de-identified form (character alignment with
:mod:`difflib`), so any backend that returns text can be scored, the old one included.
Note text stays inside tests and the benchmark; nothing here logs it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLASSES = (
    "NAME", "DATE", "AGE", "ADDRESS", "CITY", "ZIP", "FACILITY", "PHONE", "EMAIL", "URL",
    "IP", "SSN", "MRN", "ACCOUNT", "LICENSE", "DEVICE",
)  # fmt: skip
_MARK = re.compile(r"\[\[([A-Z]+)\|(.*?)\]\]|\{\{(.*?)\}\}", re.DOTALL)
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z>_ ]*\]")
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_GONE = "\ue000"  # stands for a placeholder during alignment; never in a note


@dataclass
class Note:
    """Plain note text with PHI spans ``(start, end, class)`` and must-keep term spans."""

    text: str
    phi: list[tuple[int, int, str]] = field(default_factory=list)
    keep: list[tuple[int, int]] = field(default_factory=list)


def parse(marked: str) -> Note:
    """Strip the markup, remembering where each span landed in the plain text."""
    out: list[str] = []
    note = Note("")
    pos = last = 0
    for m in _MARK.finditer(marked):
        out.append(marked[last : m.start()])
        pos += m.start() - last
        body = m.group(2) if m.group(1) else m.group(3)
        out.append(body)
        if m.group(1):
            if m.group(1) not in CLASSES:
                raise ValueError(f"unknown PHI class {m.group(1)!r}")
            note.phi.append((pos, pos + len(body), m.group(1)))
        else:
            note.keep.append((pos, pos + len(body)))
        pos += len(body)
        last = m.end()
    out.append(marked[last:])
    note.text = "".join(out)
    return note


def heldout(name: str = "heldout") -> list[Note]:
    """Hand-written notes (``heldout`` or ``heldout_b``), separated by lines of ``=====``."""
    raw = (HERE / f"{name}.txt").read_text(encoding="utf-8")
    return [parse(part.strip("\n")) for part in re.split(r"^=====+$", raw, flags=re.M)
            if part.strip()]  # fmt: skip


def generated(n: int = 120, seed: int = 7) -> list[Note]:
    """``n`` notes from the template generator."""
    from tests.modalities.deid_corpus.generate import generate

    return [parse(m) for m in generate(n, seed)]


def kept_mask(text: str, output: str) -> list[bool]:
    """For each character of ``text``: does it survive into ``output``?

    Placeholders in ``output`` are collapsed to one private-use character first so their
    letters cannot align with letters of the removed span. Whitespace runs are compared
    collapsed (de-identifiers may normalize spacing).
    """
    out = _PLACEHOLDER.sub(_GONE, output)
    index = []  # src position -> text position
    for m in re.finditer(r"\s+|\S", text):
        index.append(m.start())
    src = "".join(" " if text[i].isspace() else text[i] for i in index)
    out = re.sub(r"\s+", " ", out)
    kept = [False] * len(text)
    sm = difflib.SequenceMatcher(None, src, out, autojunk=False)
    for block in sm.get_matching_blocks():
        for k in range(block.a, block.a + block.size):
            kept[index[k]] = True
    # whitespace inside a run maps to its first char; mark the rest like it
    for m in re.finditer(r"\s+", text):
        for k in range(m.start() + 1, m.end()):
            kept[k] = kept[m.start()]
    return kept


def _leaked(text: str, kept: list[bool], start: int, end: int) -> bool:
    """A span leaks when any of its words (initials aside) mostly survives."""
    for m in _ALNUM.finditer(text, start, end):
        word = m.group()
        if len(word) == 1 and word.isalpha():
            continue  # a lone initial identifies no one
        if sum(kept[m.start() : m.end()]) * 2 > len(word):
            return True
    return False


@dataclass
class Score:
    """Counts behind recall per class, precision and preservation."""

    found: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    phi_chars_removed: int = 0
    other_chars_removed: int = 0
    other_chars: int = 0
    keep_ok: int = 0
    keep_total: int = 0
    notes: int = 0
    leaks: list[tuple[str, str]] = field(default_factory=list)
    lost_terms: list[str] = field(default_factory=list)

    def recall(self, cls: str | None = None) -> float:
        if cls is None:
            return sum(self.found.values()) / max(1, sum(self.total.values()))
        return self.found.get(cls, 0) / max(1, self.total.get(cls, 0))

    @property
    def precision(self) -> float:
        """Share of removed (non-space) characters that were PHI."""
        removed = self.phi_chars_removed + self.other_chars_removed
        return self.phi_chars_removed / max(1, removed)

    @property
    def over_redaction(self) -> float:
        """Share of non-PHI (non-space) characters removed."""
        return self.other_chars_removed / max(1, self.other_chars)

    @property
    def preservation(self) -> float:
        return self.keep_ok / max(1, self.keep_total)


def score(deid: Callable[[str], str], notes: list[Note]) -> Score:
    """Run ``deid`` on every note and score it against the annotations."""
    s = Score()
    for note in notes:
        s.notes += 1
        kept = kept_mask(note.text, deid(note.text))
        in_phi = [False] * len(note.text)
        for start, end, cls in note.phi:
            s.total[cls] = s.total.get(cls, 0) + 1
            for k in range(start, end):
                in_phi[k] = True
            if _leaked(note.text, kept, start, end):
                s.leaks.append((cls, note.text[start:end]))
            else:
                s.found[cls] = s.found.get(cls, 0) + 1
        for k, ch in enumerate(note.text):
            if ch.isspace():
                continue
            if in_phi[k]:
                s.phi_chars_removed += not kept[k]
            else:
                s.other_chars += 1
                s.other_chars_removed += not kept[k]
        for start, end in note.keep:
            s.keep_total += 1
            if all(kept[start:end]):
                s.keep_ok += 1
            else:
                s.lost_terms.append(note.text[start:end])
    return s
