"""Baseline for bench/deid.py: clinfuse's note de-identification before issue 9, verbatim.

Kept only to measure the current rules against; nothing imports it at run time.

Original docstring: rule-based de-identification and normalization of clinical note text.

Removes what synthetic and typical EHR exports carry: names after cues (Patient:, Name:,
Mr./Ms./Dr. ...), medical record numbers and other long ID-like numbers, dates in common
formats, phone numbers, e-mail addresses and social security numbers. Each hit becomes a
typed placeholder (``[NAME]``, ``[ID]``, ``[DATE]``, ``[PHONE]``, ``[EMAIL]``) so the text
stays readable for the encoder. Rules are deliberately greedy: a clinical word lost after
a cue costs little, a leaked name costs a lot.
"""

from __future__ import annotations

import re
import unicodedata

_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_NAME_WORD = r"[A-Z][a-zA-Z'\-]+"
# Name words are separated by spaces or tabs only: a name never continues on the next line.
_NAME = rf"{_NAME_WORD}(?:,?[ \t]+(?:[A-Z]\.?[ \t]+)?{_NAME_WORD}){{0,2}}"
_NAME_CUE = (
    r"(?:Patient(?:\s+name)?|Pt\.?|Name|Mr|Mrs|Ms|Miss|Mx|Dr|Doctor|Attending|"
    r"Physician|Nurse|RN|MD|Signed(?:\s+by)?|Dictated\s+by|Seen\s+by|Referred\s+by|"
    r"Contact|Son|Daughter|Wife|Husband|Spouse|Mother|Father)"
)

# Order matters: emails before names, IDs and phone numbers before dates.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[EMAIL]"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[ID]"),
    (
        re.compile(
            r"\b(MRN|MR#|MR\s+No\.?|Medical\s+Record(?:\s+(?:Number|No\.?))?|Patient\s+ID|"
            r"Record\s+#|Acc(?:ession)?(?:\s+No\.?|#)?|ID)\s*[:#]?\s*[A-Za-z]{0,3}[-]?\d[\w-]{2,}",
            re.IGNORECASE,
        ),
        r"\1 [ID]",
    ),
    (re.compile(r"(?:\+?1[\s.-]?)?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"), "[PHONE]"),
    (re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"), "[DATE]"),
    (re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"), "[DATE]"),
    (re.compile(rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"), "[DATE]"),
    (re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{4}}\b"), "[DATE]"),
    (re.compile(rf"\b{_MONTHS}\.?\s+\d{{4}}\b"), "[DATE]"),
    (re.compile(r"\b(?:DOB|D\.O\.B\.|Born)\s*[:]?\s*\S+", re.IGNORECASE), "DOB [DATE]"),
    (re.compile(r"\b\d{6,}\b"), "[ID]"),
]

_CONTROL = dict.fromkeys(c for c in range(32) if chr(c) not in "\n\t")


def normalize_text(text: str) -> str:
    """NFKC-normalize, drop control characters, collapse runs of spaces and blank lines."""
    text = unicodedata.normalize("NFKC", text).translate(_CONTROL)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    return text.strip()


_NAME_AFTER_CUE = re.compile(rf"\b({_NAME_CUE})(\.?[ \t]*:?[ \t]+)({_NAME})")
_NAME_PART = re.compile(r"[A-Z][a-zA-Z'\-]+")


def _redact_names(text: str) -> str:
    """Names after cues, then every other occurrence of those names' words in the note.

    "Patient: Hannah Nakamura ... Ms. Nakamura reports" loses both: a surname seen once
    after a cue is redacted wherever it appears.
    """
    found = {w for m in _NAME_AFTER_CUE.finditer(text) for w in _NAME_PART.findall(m.group(3))}
    text = _NAME_AFTER_CUE.sub(r"\1\2[NAME]", text)
    for word in sorted(found, key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(word)}\b", "[NAME]", text)
    return text


def deidentify(text: str) -> str:
    """Replace PHI-like spans with placeholders (see module docstring), then normalize."""
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return normalize_text(_redact_names(text))
