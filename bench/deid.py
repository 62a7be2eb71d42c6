"""Benchmark: note de-identification, the old rules (baseline) vs clinfuse's current ones.

Baseline: ``bench/deid_baseline.py``, the implementation before issue 9 (cue-word names,
a few date and ID formats). Current: ``modalities.deid.deidentify`` (backend ``rules``).

Prints, for each annotated set in ``tests/modalities/deid_corpus`` (and, with ``--i2b2``,
a folder of i2b2-2014 XML notes), side by side: recall per PHI class (found/total), overall
recall, precision and over-redaction (characters), clinical-term preservation; then
throughput on the corpus notes and wall time on long single-token and random-word notes.

    python bench/deid.py                 # all sets, 1 MB long-input cases
    python bench/deid.py --quick         # smaller long-input cases
    python bench/deid.py --i2b2 DIR      # also score DIR/*.xml (i2b2 2014 format)
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "bench"))

from deid_baseline import deidentify as baseline  # noqa: E402

from modalities.deid import deidentify  # noqa: E402
from tests.modalities.deid_corpus import CLASSES, Note, Score, generated, heldout, score  # noqa: E402

# i2b2 2014 tag types -> Safe Harbor classes used here. PROFESSION, STATE, COUNTRY and
# ORGANIZATION are not Safe Harbor identifiers; bare years and ages <= 89 are allowed.
I2B2 = {
    "PATIENT": "NAME", "DOCTOR": "NAME", "USERNAME": "NAME", "HOSPITAL": "FACILITY",
    "STREET": "ADDRESS", "CITY": "CITY", "ZIP": "ZIP", "PHONE": "PHONE", "FAX": "PHONE",
    "EMAIL": "EMAIL", "URL": "URL", "MEDICALRECORD": "MRN", "IDNUM": "MRN", "BIOID": "MRN",
    "DEVICE": "DEVICE", "HEALTHPLAN": "ACCOUNT", "LICENSE": "LICENSE", "DATE": "DATE",
    "AGE": "AGE",
}  # fmt: skip


def i2b2_notes(folder: Path) -> list[Note]:
    """i2b2 2014 XML notes (``<TEXT>`` plus ``<TAGS>`` with start/end/TYPE)."""
    notes = []
    for path in sorted(folder.glob("*.xml")):
        root = ET.parse(path).getroot()
        text = root.findtext("TEXT") or ""
        note = Note(text)
        for tag in root.find("TAGS") or []:
            cls = I2B2.get(tag.attrib.get("TYPE", ""))
            start, end = int(tag.attrib["start"]), int(tag.attrib["end"])
            value = text[start:end].strip()
            if cls == "DATE" and re.fullmatch(r"'?\d{2,4}s?", value):
                continue  # a year alone may stay
            if cls == "AGE" and not (value.isdigit() and int(value) > 89):
                continue
            if cls:
                note.phi.append((start, end, cls))
        notes.append(note)
    return notes


def _fmt(s: Score, cls: str) -> str:
    total = s.total.get(cls, 0)
    if not total:
        return "-"
    return f"{s.found.get(cls, 0)}/{total} ({s.recall(cls):.2f})"


def report(name: str, notes: list[Note], fns: dict[str, Callable[[str], str]]) -> None:
    scores = {k: score(fn, notes) for k, fn in fns.items()}
    spans = sum(len(n.phi) for n in notes)
    keep = sum(len(n.keep) for n in notes)
    print(f"\n== {name}: {len(notes)} notes, {spans} PHI spans, {keep} must-keep terms")
    print(f"{'class':10s}" + "".join(f"{k:>22s}" for k in scores))
    for cls in CLASSES:
        if any(s.total.get(cls) for s in scores.values()):
            print(f"{cls:10s}" + "".join(f"{_fmt(s, cls):>22s}" for s in scores.values()))
    rows = [
        ("recall", lambda s: f"{sum(s.found.values())}/{sum(s.total.values())} ({s.recall():.3f})"),
        ("precision", lambda s: f"{s.precision:.3f}"),
        ("over-redact", lambda s: f"{s.over_redaction:.4f}"),
        ("preserved", lambda s: f"{s.keep_ok}/{s.keep_total} ({s.preservation:.3f})"
                      if s.keep_total else "-"),
    ]  # fmt: skip
    for label, f in rows:
        print(f"{label:10s}" + "".join(f"{f(s):>22s}" for s in scores.values()))


def timed(fn: Callable[[str], str], text: str) -> float:
    t0 = time.perf_counter()
    fn(text)
    return time.perf_counter() - t0


def throughput(notes: list[Note], fns: dict[str, Callable[[str], str]]) -> None:
    texts = [n.text for n in notes]
    size = sum(len(t) for t in texts) / 1e3
    print(f"\n== throughput on {len(texts)} corpus notes ({size:.0f} kB)")
    for name, fn in fns.items():
        fn(texts[0])  # word lists load once
        best = min(sum(timed(fn, t) for t in texts) for _ in range(3))
        print(f"{name:10s} {len(texts) / best:8.0f} notes/s  {size / best:8.0f} kB/s")


def long_inputs(quick: bool) -> None:
    mb = 200_000 if quick else 1_000_000
    rng = random.Random(0)
    vocab = "pain Smith March denies 12 Dr. L4-L5 BP 120/80 on the patient reports Maria daily"
    words = [*vocab.split(), "mg", "Nguyen", "with"]
    cases = {
        "single token (a*)": "a" * mb,
        "e-mail token (x*@host)": "x" * (mb - 12) + "@example.org",
        "random words": " ".join(rng.choice(words) for _ in range(mb // 4))[:mb],
        "capitalised words": "Aa " * (mb // 3),
        "digits and slashes": "1/" * (mb // 2),
    }
    print(f"\n== long notes ({mb / 1e6:.1f} MB each), current rules")
    for name, text in cases.items():
        print(f"{name:26s} {timed(deidentify, text):6.2f} s")
    # The old e-mail rule retried [\w.+-]+ from every position of a long token without "@".
    print("\n== one token of word characters, no '@': baseline vs current (doubling the length)")
    for n in (10_000, 20_000, 40_000):
        text = "x" * n
        print(f"{n // 1000:3d} kB   baseline {timed(baseline, text):7.2f} s   "
              f"current {timed(deidentify, text):6.3f} s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller long-input cases")
    ap.add_argument("--i2b2", type=Path, help="folder of i2b2-2014 XML notes to score too")
    args = ap.parse_args()
    fns = {"baseline": baseline, "current": deidentify}
    gen = generated()
    report("generated (templates, seed 7)", gen, fns)
    report("held-out A (hand-written)", heldout("heldout"), fns)
    report("held-out B (hand-written, measured blind first)", heldout("heldout_b"), fns)
    if args.i2b2:
        report(f"i2b2 2014 sample ({args.i2b2.name})", i2b2_notes(args.i2b2), fns)
    throughput(gen, fns)
    long_inputs(args.quick)


if __name__ == "__main__":
    main()
