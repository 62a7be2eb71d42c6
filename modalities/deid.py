"""De-identification and normalization of clinical note text (HIPAA Safe Harbor classes).

``deidentify(text)`` replaces every span that identifies a person with a typed placeholder
(``[NAME]``, ``[DATE]``, ``[AGE]``, ``[ADDRESS]``, ``[LOCATION]``, ``[ZIP]``,
``[FACILITY]``, ``[PHONE]``, ``[EMAIL]``, ``[URL]``, ``[IP]``, ``[ID]``) so the text stays
readable for the encoder, then normalizes it. The default backend (``"rules"``) combines

- pattern rules for the structured classes (:mod:`modalities.deid_rules`), and
- name finding by cues, name lists and a safe-word filter (:mod:`modalities.deid_names`).

Spans are found on the whole note first and replaced once, so rules cannot feed on each
other's placeholders. The trade-off is deliberate: a clinical word lost costs little, a
leaked name costs a lot. ``docs/deid.md`` has the method, the measured recall, precision
and preservation, and the known limits. Backends are pluggable (:func:`register_backend`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from modalities.deid_names import find_names
from modalities.deid_rules import Span, find_patterns
from modalities.errors import UnknownNameError

PLACEHOLDER = {
    "NAME": "[NAME]", "DATE": "[DATE]", "AGE": "[AGE]", "ADDRESS": "[ADDRESS]",
    "CITY": "[LOCATION]", "ZIP": "[ZIP]", "FACILITY": "[FACILITY]", "PHONE": "[PHONE]",
    "EMAIL": "[EMAIL]", "URL": "[URL]", "IP": "[IP]", "SSN": "[ID]", "ID": "[ID]",
}  # fmt: skip
# When spans overlap, the merged span takes the class that reads best in the output.
_PRIORITY = ["EMAIL", "URL", "IP", "SSN", "PHONE", "DATE", "AGE", "ID", "ADDRESS", "ZIP",
             "FACILITY", "NAME", "CITY"]  # fmt: skip
_RANK = {c: i for i, c in enumerate(_PRIORITY)}

_CONTROL = dict.fromkeys(c for c in range(32) if chr(c) not in "\n\t")
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n[ \t\n]*\n")
_PLACEHOLDER_RE = re.compile(r"\[[A-Z][A-Z_>]*\]")
_AGE_AFTER_NAME = re.compile(r"[\"')]?,?[ \t]+(9\d|1[01]\d)(?=[ \t]*(?:[,;)]|$))", re.M)


def _clean(text: str) -> str:
    """NFKC-normalize and drop control characters (keeps newlines and tabs)."""
    return unicodedata.normalize("NFKC", text).translate(_CONTROL)


def normalize_text(text: str) -> str:
    """NFKC-normalize, drop control characters, collapse runs of spaces and blank lines."""
    text = _SPACES.sub(" ", _clean(text))
    text = _BLANKS.sub("\n\n", text)
    return text.strip()


def merge_spans(spans: list[Span], text: str) -> list[Span]:
    """Union of overlapping spans; neighbours of one class joined across spaces/commas."""
    # Twice: a merge can change a span's class, which can make it join its left neighbour.
    return _merge(_merge(spans, text), text)


def _merge(spans: list[Span], text: str) -> list[Span]:
    out: list[Span] = []
    for start, end, cls in sorted(spans):
        if start >= end:
            continue
        if out:
            ps, pe, pc = out[-1]
            gap = text[pe:start] if start > pe else ""
            if start < pe or (pc == cls and len(gap) <= 3 and gap.strip(" ,.\t") == ""
                              and "\n" not in gap):  # fmt: skip
                best = pc if _RANK.get(pc, 99) <= _RANK.get(cls, 99) else cls
                out[-1] = (ps, max(pe, end), best)
                continue
        out.append((start, end, cls))
    return out


def find_phi(text: str) -> list[Span]:
    """PHI spans ``(start, end, class)`` in ``text`` (after :func:`_clean`), merged."""
    placeholders = [(m.start(), m.end()) for m in _PLACEHOLDER_RE.finditer(text)]
    spans = find_patterns(text) + find_names(text, placeholders)
    # "Earl Wexler, 102, was admitted": a bare number over 89 right after a name is an age.
    for _, end, cls in list(spans):
        if cls == "NAME":
            m = _AGE_AFTER_NAME.match(text, end)
            if m:
                spans.append((m.start(1), m.end(1), "AGE"))
    return merge_spans(spans, text)


def _rules(text: str) -> str:
    text = _clean(text)
    parts: list[str] = []
    last = 0
    for start, end, cls in find_phi(text):
        parts.append(text[last:start])
        parts.append(PLACEHOLDER.get(cls, "[ID]"))
        last = end
    parts.append(text[last:])
    return "".join(parts)


_BACKENDS: dict[str, Callable[[str], str]] = {"rules": _rules}


def register_backend(name: str, fn: Callable[[str], str]) -> None:
    """Add a de-identifier (text -> text with PHI replaced) under ``name``."""
    _BACKENDS[name] = fn


def backends() -> list[str]:
    """Names of the registered de-identification backends."""
    return sorted(_BACKENDS)


def deidentify(text: str, backend: str = "rules") -> str:
    """Replace PHI spans with placeholders (see module docstring), then normalize."""
    try:
        fn = _BACKENDS[backend]
    except KeyError:
        raise UnknownNameError("de-identification backend", backend, backends()) from None
    return normalize_text(fn(text))
