"""Clinical notes: load (file or inline text) -> validate -> de-identify -> encode.

The cache stores de-identified, normalized text; tokenization happens at batch time so the
same prepared cohort serves any text encoder.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any

from modalities.base import Modality, Spec, register_modality
from modalities.deid import deidentify, normalize_text
from modalities.errors import InputRejected, ReasonCode
from modalities.paths import resolve_under_root
from modalities.text_encoder import TextEncoderConfig

_NOTE_SUFFIXES = (".txt", ".text", ".note")


class NoteSpec(Spec):
    """How notes are cleaned: de-identification on by default; a size cap rejects dumps."""

    deidentify: bool = True
    max_bytes: int = 1_000_000
    min_chars: int = 1


def looks_like_note_path(value: str) -> bool:
    """A manifest cell is a path when it is one line ending in a note suffix."""
    return "\n" not in value and len(value) < 4096 and value.lower().endswith(_NOTE_SUFFIXES)


@register_modality("note")
class NoteModality(Modality):
    """Free-text clinical notes (EHR exports) encoded by a Hugging Face text model."""

    kind = "text"
    version = 3  # bumped when de-identification changes: cached notes are recomputed
    Spec = NoteSpec
    EncoderSpec = TextEncoderConfig

    def resolve(self, value: str, root: Path, ref: str) -> Path | str:
        """A ``.txt`` path under the data root, or the cell's own text."""
        if looks_like_note_path(value):
            return resolve_under_root(value, root, ref)  # type: ignore[return-value]
        return value

    def _bytes(self, source: Path | str) -> bytes:
        if isinstance(source, Path):
            if source.is_dir():
                raise InputRejected(ReasonCode.NOTE_NOT_TEXT, "note path is a folder")
            if source.stat().st_size > self.spec.max_bytes:
                raise InputRejected(
                    ReasonCode.NOTE_NOT_TEXT,
                    f"note file is larger than max_bytes={self.spec.max_bytes}; "
                    "is it an export dump rather than one note?",
                )
            return source.read_bytes()
        return source.encode("utf-8")

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
        text = deidentify(raw) if self.spec.deidentify else normalize_text(raw)
        if len(text) < self.spec.min_chars:
            raise InputRejected(ReasonCode.EMPTY_NOTE, "note is empty after de-identification")
        return text

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
