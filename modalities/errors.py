"""Typed, user-facing errors.

Every error a user can cause (bad file, bad config, unknown name) is a ``ClinfuseError``:
it names the input and says what to do. Messages never carry PHI: callers pass sanitized
source references (pseudonymized paths), never header values or note text.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    """Why an input was quarantined. Documented in docs/reason-codes.md."""

    NOT_DICOM = "NOT_DICOM"
    UNREADABLE = "UNREADABLE"
    PIXEL_DECODE_FAILED = "PIXEL_DECODE_FAILED"
    CODEC_UNAVAILABLE = "CODEC_UNAVAILABLE"
    MISSING_SLICES = "MISSING_SLICES"
    INCONSISTENT_SPACING = "INCONSISTENT_SPACING"
    INCONSISTENT_ORIENTATION = "INCONSISTENT_ORIENTATION"
    INCONSISTENT_SHAPE = "INCONSISTENT_SHAPE"
    MULTIPLE_SERIES = "MULTIPLE_SERIES"
    TOO_FEW_SLICES = "TOO_FEW_SLICES"
    NON_FINITE_VALUES = "NON_FINITE_VALUES"
    WRONG_MODALITY = "WRONG_MODALITY"
    MISSING_FILE = "MISSING_FILE"
    PATH_OUTSIDE_ROOT = "PATH_OUTSIDE_ROOT"
    EMPTY_NOTE = "EMPTY_NOTE"
    NOTE_NOT_TEXT = "NOTE_NOT_TEXT"
    DUPLICATE_PATIENT = "DUPLICATE_PATIENT"
    BAD_LABEL = "BAD_LABEL"
    BAD_SPLIT = "BAD_SPLIT"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    # ingest safety (issue 9/10)
    NOT_REGULAR_FILE = "NOT_REGULAR_FILE"
    NOTE_TOO_LARGE = "NOTE_TOO_LARGE"
    UNSUPPORTED_NOTE_FORMAT = "UNSUPPORTED_NOTE_FORMAT"
    TIMEOUT = "TIMEOUT"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # geometry (issue 10)
    INVALID_SPACING = "INVALID_SPACING"
    INVALID_ORIENTATION = "INVALID_ORIENTATION"
    GANTRY_TILT = "GANTRY_TILT"
    SLICE_GAP_TOO_LARGE = "SLICE_GAP_TOO_LARGE"
    TRUNCATED_FILE = "TRUNCATED_FILE"
    VOLUME_TOO_LARGE = "VOLUME_TOO_LARGE"


class ClinfuseError(Exception):
    """Base class of errors a user can cause and fix; the CLI prints them without a traceback."""


class ConfigError(ClinfuseError):
    """A config file, key or value is wrong."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid names: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class PluginError(ConfigError):
    """An installed plugin (an entry point in a ``clinfuse.*`` group) failed to load."""


class InputRejected(ClinfuseError):
    """One input cannot be used. Ingest quarantines it and carries on with the batch.

    ``source`` is a sanitized reference to the input (never a raw patient ID).
    """

    def __init__(self, code: ReasonCode | str, message: str, source: str | None = None) -> None:
        self.code = ReasonCode(code)
        self.message = message
        self.source = source
        super().__init__(f"{self.code}: {message}" + (f" [{source}]" if source else ""))

    def with_source(self, source: str) -> InputRejected:
        """Return the same rejection naming ``source`` (used once the caller knows it)."""
        return InputRejected(self.code, self.message, source)
