"""Modalities: one file per input type (load -> validate -> preprocess -> encode).

Importing this package registers every modality. The list below is checked by a test so an
import that silently fails to register a modality is caught.
"""

from modalities import audio, ct, image, mri, note, tabular  # noqa: F401  (registration)
from modalities.base import (
    Modality,
    Tokens,
    create_modality,
    modality_class,
    modality_names,
    register_modality,
)
from modalities.errors import ClinfuseError, ConfigError, InputRejected, ReasonCode

EXPECTED_MODALITIES = ["audio", "ct", "image", "mri", "note", "tabular"]

__all__ = [
    "EXPECTED_MODALITIES",
    "ClinfuseError",
    "ConfigError",
    "InputRejected",
    "Modality",
    "ReasonCode",
    "Tokens",
    "create_modality",
    "modality_class",
    "modality_names",
    "register_modality",
]
