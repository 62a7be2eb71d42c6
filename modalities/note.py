"""Clinical notes: load (file or inline text) -> validate -> de-identify -> encode.

The cache stores de-identified, normalized text; tokenization happens at batch time so the
same prepared cohort serves any text encoder.

A manifest cell is a note file when it looks like a path (see ``looks_like_path``); a path
whose extension is not a text note (``.rtf``, ``.pdf``, ...) is rejected, never stored as
the note's text (the path itself often carries the patient's name). File and inline notes
share one size cap (``spec.max_bytes``), and runs of non-space characters longer than
``spec.max_token_chars`` are replaced before de-identification: its regular expressions
are quadratic in the length of one token, so a 1 MB single-token note would stall ingest.
"""

from __future__ import annotations

import hashlib
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field

from modalities.base import Modality, Spec, register_modality
from modalities.deid import deidentify, normalize_text
from modalities.errors import InputRejected, ReasonCode
from modalities.files import read_capped, too_large
from modalities.paths import resolve_under_root
from modalities.text_encoder import TextEncoderConfig

_NOTE_SUFFIXES = (".txt", ".text", ".note")
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")  # .rtf, .pdf, .docx, .json ...
LONG_TOKEN = "[LONG]"


class NoteSpec(Spec):
    """How notes are cleaned: de-identification on by default; a size cap rejects dumps."""

    deidentify: bool = True
    max_bytes: int = Field(1_000_000, ge=1)  # file and inline notes alike
    min_chars: int = 1
    max_token_chars: int = Field(200, ge=16)  # longer runs of non-space become [LONG]


def looks_like_note_path(value: str) -> bool:
    """A manifest cell is a note path when it is one line ending in a note suffix."""
    return "\n" not in value and len(value) < 4096 and value.lower().endswith(_NOTE_SUFFIXES)


def looks_like_path(value: str) -> bool:
    """Whether a cell is meant as a file path rather than the note's text.

    One line and: a note suffix; or no whitespace and a path separator or extension
    (``notes/x``, ``scan.pdf``); or a separator and a last part ending in an extension
    (``notes/Jane Doe.rtf``); or a trailing separator. Inline notes are sentences: they
    have spaces, and rarely end in ``word.ext`` after a slash.
    """
    v = value.strip()
    if "\n" in v or len(v) >= 4096 or not v:
        return False
    if v.lower().endswith(_NOTE_SUFFIXES) or v.endswith(("/", "\\")):
        return True
    has_sep = "/" in v or "\\" in v
    if not any(ch.isspace() for ch in v):
        return has_sep or bool(_EXTENSION.search(v))
    return has_sep and bool(_EXTENSION.search(re.split(r"[/\\]", v)[-1]))


@register_modality("note")
class NoteModality(Modality):
    """Free-text clinical notes (EHR exports) encoded by a Hugging Face text model."""

    kind = "text"
    version = 3  # bumped when de-identification changes: cached notes are recomputed
    Spec = NoteSpec
    EncoderSpec = TextEncoderConfig

    def resolve(self, value: str, root: Path, ref: str) -> Path | str:
        """A ``.txt`` path under the data root, or the cell's own text (size-capped)."""
        if looks_like_path(value):
            if not looks_like_note_path(value.strip()):
                raise InputRejected(
                    ReasonCode.UNSUPPORTED_NOTE_FORMAT,
                    f"the note cell names a file that is not a text note (use one of "
                    f"{', '.join(_NOTE_SUFFIXES)}); export the note as UTF-8 text",
                    ref,
                )
            return resolve_under_root(  # type: ignore[return-value]
                value.strip(), root, ref, selectors=False, folders=False
            )
        if len(value.encode("utf-8", "surrogatepass")) > self.spec.max_bytes:
            raise too_large("note", self.spec.max_bytes).with_source(ref)
        return value

    def _bytes(self, source: Path | str) -> bytes:
        if isinstance(source, Path):
            return read_capped(source, self.spec.max_bytes, "note")
        data = source.encode("utf-8", "surrogatepass")
        if len(data) > self.spec.max_bytes:
            raise too_large("note", self.spec.max_bytes)
        return data

    def content_hash(self, source: Path | str) -> str:
        return hashlib.blake2b(self._bytes(source), digest_size=20).hexdigest()

    def load(self, source: Path | str) -> str:
        """Decode as UTF-8 text; reject binary content and empty notes."""
        data = self._bytes(source)
        if b"\x00" in data:
            raise InputRejected(
                ReasonCode.NOTE_NOT_TEXT, "note contains NUL bytes (binary file?); export as text"
            )
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputRejected(
                ReasonCode.NOTE_NOT_TEXT, "note is not valid UTF-8 text; re-export as UTF-8"
            ) from None
        printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
        if text and printable / len(text) < 0.9:
            raise InputRejected(
                ReasonCode.NOTE_NOT_TEXT, "note is mostly non-printable characters; export as text"
            )
        if len(normalize_text(text)) < self.spec.min_chars:
            raise InputRejected(
                ReasonCode.EMPTY_NOTE, "note is empty; remove the entry or supply the text"
            )
        return text

    def preprocess(self, raw: str) -> str:
        raw = self._long_tokens.sub(LONG_TOKEN, raw)
        text = deidentify(raw) if self.spec.deidentify else normalize_text(raw)
        if len(text) < self.spec.min_chars:
            raise InputRejected(ReasonCode.EMPTY_NOTE, "note is empty after de-identification")
        return text

    @cached_property
    def _long_tokens(self) -> re.Pattern[str]:
        # The lookbehind starts matches only at token starts: linear in the note's length.
        return re.compile(rf"(?<!\S)\S{{{self.spec.max_token_chars + 1},}}")

    @cached_property
    def tokenizer(self) -> Any:
        from modalities.text_encoder import load_tokenizer

        return load_tokenizer(self.encoder_config)

    def collate(self, items: list[str]) -> dict[str, Any]:  # type: ignore[override]
        from modalities.text_encoder import tokenize_notes

        return tokenize_notes(list(items), self.tokenizer, self.encoder_config)

    def encoder(self):
        from modalities.text_encoder import TextEncoder

        return TextEncoder(self.encoder_config)
