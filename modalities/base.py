"""The modality contract: load -> validate -> preprocess -> encode, and its registry.

Adding a modality means one new file with one ``@register_modality("name")`` class: the
registry imports the modules of this package that use the decorator on first lookup (so
``import modalities`` stays light), and plugins add modalities through the
``clinfuse.modalities`` entry-point group (``modalities.registry``). A test lists the
expected built-in names, so an import that silently fails to register one is caught.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from modalities.errors import InputRejected, ReasonCode
from modalities.files import read_capped
from modalities.paths import SeriesRef, resolve_under_root
from modalities.registry import MODALITY_GROUP, Registry, builtin_modules


@dataclass
class Tokens:
    """What every encoder returns: ``values`` (B, N, D) and a bool ``mask`` (B, N), True = real."""

    values: torch.Tensor
    mask: torch.Tensor

    def pooled(self) -> torch.Tensor:
        """Masked mean over tokens -> (B, D); rows with no valid token give zeros."""
        m = self.mask.unsqueeze(-1).to(self.values.dtype)
        return (self.values * m).sum(1) / m.sum(1).clamp_min(1.0)


class Spec(BaseModel):
    """Preprocessing spec of a modality. Hashed into cache keys and saved with models."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderConfig(BaseModel):
    """Encoder settings of a modality (not part of the cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


CachedValue = np.ndarray | str


class Modality(ABC):
    """One input type. Subclasses set ``Spec``/``EncoderSpec`` and implement the four steps.

    ``version`` is bumped whenever preprocessing output changes, invalidating cache keys.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "volume", "text", "audio", "image", "tabular"
    version: ClassVar[int] = 1
    Spec: ClassVar[type[Spec]] = Spec
    EncoderSpec: ClassVar[type[EncoderConfig]] = EncoderConfig

    def __init__(
        self,
        spec: Spec | dict[str, Any] | None = None,
        encoder: EncoderConfig | dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.instance_name = name or self.name
        self.spec = spec if isinstance(spec, self.Spec) else self.Spec.model_validate(spec or {})
        self.encoder_config = (
            encoder
            if isinstance(encoder, self.EncoderSpec)
            else self.EncoderSpec.model_validate(encoder or {})
        )

    def spec_hash(self) -> str:
        """Stable hash of (modality type, preprocessing version, spec)."""
        payload = json.dumps(
            {"type": self.name, "version": self.version, "spec": self.spec.model_dump(mode="json")},
            sort_keys=True,
        )
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()

    def cache_key(self, content_hash: str) -> str:
        """Content-addressed key: what the input is plus how it is preprocessed."""
        return hashlib.blake2b(
            f"{self.spec_hash()}:{content_hash}".encode(), digest_size=20
        ).hexdigest()

    def resolve(self, value: str, root: Path, ref: str) -> Path | SeriesRef | str:
        """Turn a manifest cell into a source; default: a path under the data root.

        Only volumes take a ``folder#SeriesInstanceUID`` selector: for any other modality a
        ``#`` is part of the file name.
        """
        return resolve_under_root(value, root, ref, selectors=self.kind == "volume")

    @abstractmethod
    def content_hash(self, source: Path | str) -> str:
        """Hash of the input's content (cheap to recompute; may use a stat-keyed memo)."""

    @abstractmethod
    def load(self, source: Path | str) -> Any:
        """Read and validate one input; raise ``InputRejected`` with a reason code."""

    @abstractmethod
    def preprocess(self, raw: Any) -> CachedValue:
        """Turn a loaded input into what the cache stores (array or de-identified text)."""

    @abstractmethod
    def collate(self, items: list[CachedValue]) -> dict[str, torch.Tensor]:
        """Batch cached values into the keyword inputs of ``encoder()``'s forward."""

    @abstractmethod
    def encoder(self) -> nn.Module:
        """Build the encoder: ``forward(**collate(items)) -> Tokens``."""


class SingleFileModality(Modality):
    """A modality whose input is one file, read whole and hashed by its bytes (audio, image)."""

    what: ClassVar[str] = "input"  # names the input in messages: "audio file does not exist"
    max_bytes: ClassVar[int] = 1 << 30  # read whole into memory: refuse anything bigger

    def read_bytes(self, source: Path | str) -> bytes:
        """The file's bytes; only a regular file of at most ``max_bytes`` is read."""
        path = Path(source)
        if path.is_dir() or not path.exists():
            raise InputRejected(
                ReasonCode.MISSING_FILE,
                f"{self.what} file does not exist (or is a folder); fix the path",
            )
        try:
            return read_capped(path, self.max_bytes, f"{self.what} file")
        except OSError as e:
            raise InputRejected(
                ReasonCode.UNREADABLE, f"{self.what} file cannot be read ({type(e).__name__})"
            ) from None

    def content_hash(self, source: Path | str) -> str:
        return hashlib.blake2b(self.read_bytes(source), digest_size=20).hexdigest()


def _builtin_modality_modules() -> list[str]:
    """The modules of this package that register a modality (found by their decorator)."""
    return builtin_modules("modalities", marker="@register_modality(")


_REGISTRY: Registry[type[Modality]] = Registry(
    "modality", builtins=_builtin_modality_modules, group=MODALITY_GROUP
)
register_modality = _REGISTRY.register


def modality_names() -> list[str]:
    """Names of all modalities (built-in and declared by installed plugins), sorted."""
    return _REGISTRY.names()


def builtin_modality_names() -> list[str]:
    """Names of the modalities clinfuse itself registers, sorted (no plugin is imported)."""
    return _REGISTRY.builtin_names()


def modality_class(name: str) -> type[Modality]:
    """Look a modality class up by name, listing valid names if unknown."""
    return _REGISTRY.get(name)


def create_modality(
    name: str,
    spec: dict[str, Any] | None = None,
    encoder: dict[str, Any] | None = None,
    type: str | None = None,
) -> Modality:
    """Instantiate modality ``type`` (default ``name``) under instance name ``name``."""
    return modality_class(type or name)(spec=spec, encoder=encoder, name=name)
