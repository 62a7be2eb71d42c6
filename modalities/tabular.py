"""Tabular inputs (labs, vitals): a JSON object ``{"name": value}`` -> standardised vector.

A source is a ``.json`` file under the data root or an inline JSON object in the manifest
cell. Values may be numbers, booleans, numeric strings, ``null`` or absent. ``preprocess``
gives float32 (2F,): F standardised values (0 where missing) then F missing indicators
(1 = missing), so a missing lab is never a fake zero without its flag. NaN counts as
missing (common in exports); +/-inf is rejected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from modalities.base import EncoderConfig, Modality, Spec, Tokens, register_modality
from modalities.errors import ConfigError, InputRejected, ReasonCode
from modalities.paths import resolve_under_root
from modalities.registry import Registry, encoder_registry

_MAX_BYTES = 1_000_000


class Feature(BaseModel):
    """One input column and its standardisation (``(value - mean) / std``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    mean: float = 0.0
    std: float = 1.0

    @field_validator("std")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("std must be > 0")
        return v


class TabularSpec(Spec):
    """Feature list (a name or ``{name, mean, std}`` each); order defines the vector."""

    features: tuple[Feature, ...] = ()

    @field_validator("features", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        items = [{"name": f} if isinstance(f, str) else f for f in v or ()]
        names = [f["name"] if isinstance(f, dict) else f.name for f in items]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        return items


class TabularEncoderConfig(EncoderConfig):
    """``mlp``: (values, indicators) -> hidden -> ``n_tokens`` tokens; ``ft``: one token per
    feature (FT-Transformer style: value x learned vector + bias, or a learned "missing"
    embedding when the indicator is set)."""

    name: str = "mlp"
    n_tokens: int = 4
    out_dim: int = 64
    hidden: int = 128
    dropout: float = 0.1


def _number(value: Any, feature: str) -> float:
    """One JSON value -> float (NaN = missing). Never puts the value in a message."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip()) if value.strip() else math.nan
        except ValueError:
            raise InputRejected(
                ReasonCode.UNSUPPORTED_FORMAT,
                f"feature {feature!r} holds text that is not a number; give a number or null",
            ) from None
    else:
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            f"feature {feature!r} holds a list/object; give a number or null",
        )
    if math.isinf(out):
        raise InputRejected(ReasonCode.NON_FINITE_VALUES, f"feature {feature!r} is infinite")
    return out


class TabularMLP(nn.Module):
    """(B, 2F) -> (B, n_tokens, out_dim) through a one-hidden-layer MLP."""

    def __init__(self, n_features: int, cfg: TabularEncoderConfig) -> None:
        super().__init__()
        self.n_tokens, self.out_dim = cfg.n_tokens, cfg.out_dim
        self.net = nn.Sequential(
            nn.Linear(2 * n_features, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.n_tokens * cfg.out_dim),
        )

    def forward(self, x: torch.Tensor) -> Tokens:
        values = self.net(x).view(x.shape[0], self.n_tokens, self.out_dim)
        return Tokens(values, torch.ones(values.shape[:2], dtype=torch.bool, device=x.device))


class FeatureTokenizer(nn.Module):
    """One token per feature: ``value * w_f + b_f``, or a learned ``missing_f`` if missing."""

    def __init__(self, n_features: int, cfg: TabularEncoderConfig) -> None:
        super().__init__()
        self.n, self.out_dim = n_features, cfg.out_dim
        d = cfg.out_dim
        self.weight = nn.Parameter(torch.randn(n_features, d) / math.sqrt(d))
        self.bias = nn.Parameter(torch.zeros(n_features, d))
        self.missing = nn.Parameter(torch.randn(n_features, d) / math.sqrt(d))

    def forward(self, x: torch.Tensor) -> Tokens:
        value, missing = x[:, : self.n, None], x[:, self.n :, None]
        present = value * self.weight + self.bias
        values = torch.where(missing > 0.5, self.missing.expand_as(present), present)
        return Tokens(values, torch.ones(values.shape[:2], dtype=torch.bool, device=x.device))


TabularBuilder = Callable[[int, TabularEncoderConfig], nn.Module]
TABULAR_ENCODERS: Registry[TabularBuilder] = encoder_registry("tabular encoder")
TABULAR_ENCODERS.add("mlp", TabularMLP)
TABULAR_ENCODERS.add("ft", FeatureTokenizer)


def build_tabular_encoder(n_features: int, cfg: TabularEncoderConfig) -> nn.Module:
    """The encoder ``cfg.name`` names; ``forward(x (B, 2F)) -> Tokens``."""
    builder = TABULAR_ENCODERS.get(cfg.name)
    if n_features < 1:
        raise ConfigError("tabular: spec.features is empty; list the lab/vital names to use")
    return builder(n_features, cfg)


@register_modality("tabular")
class TabularModality(Modality):
    """Labs and vitals as a standardised vector with missing-value indicators."""

    kind = "tabular"
    version = 1
    Spec = TabularSpec
    EncoderSpec = TabularEncoderConfig

    def resolve(self, value: str, root: Path, ref: str) -> Path | str:
        """An inline JSON object stays text; anything else is a path under the data root."""
        if value.lstrip().startswith("{"):
            return value
        return resolve_under_root(value, root, ref)  # type: ignore[return-value]

    def _text(self, source: Path | str) -> bytes:
        if isinstance(source, str) and source.lstrip().startswith("{"):
            return source.encode("utf-8")
        path = Path(source)
        if not path.is_file():
            raise InputRejected(
                ReasonCode.MISSING_FILE, "tabular JSON file does not exist; fix path"
            )
        if path.stat().st_size > _MAX_BYTES:
            raise InputRejected(
                ReasonCode.UNSUPPORTED_FORMAT, "tabular file is over 1 MB; give one JSON object"
            )
        return path.read_bytes()

    def _parse(self, data: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputRejected(
                ReasonCode.UNREADABLE, "tabular input is not valid UTF-8 JSON; fix the export"
            ) from None
        if not isinstance(obj, dict):
            raise InputRejected(
                ReasonCode.UNSUPPORTED_FORMAT,
                'tabular input must be one JSON object {"feature": value, ...}',
            )
        return obj

    def content_hash(self, source: Path | str) -> str:
        """Hash of the canonical JSON, so key order and whitespace do not matter."""
        data = self._text(source)
        with contextlib.suppress(InputRejected):  # load() rejects it; hash the bytes meanwhile
            data = json.dumps(self._parse(data), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.blake2b(data, digest_size=20).hexdigest()

    def load(self, source: Path | str) -> dict[str, float]:
        """Parse and validate: the configured features as floats (NaN = missing)."""
        feats = self.spec.features
        if not feats:
            raise ConfigError("tabular: spec.features is empty; list the lab/vital names to use")
        obj = self._parse(self._text(source))
        values = {f.name: _number(obj.get(f.name), f.name) for f in feats}
        if all(math.isnan(v) for v in values.values()):
            raise InputRejected(
                ReasonCode.UNSUPPORTED_FORMAT,
                f"none of the {len(feats)} configured features has a value; check that the "
                "JSON keys match spec.features, or leave the cell empty",
            )
        return values

    def preprocess(self, raw: dict[str, float]) -> np.ndarray:
        """-> float32 (2F,): standardised values (0 if missing), then missing flags."""
        feats = self.spec.features
        v = np.array([raw.get(f.name, math.nan) for f in feats], dtype=np.float64)
        mean = np.array([f.mean for f in feats])
        std = np.array([f.std for f in feats])
        missing = np.isnan(v)
        z = np.where(missing, 0.0, (v - mean) / std)
        return np.concatenate([z, missing.astype(np.float64)]).astype(np.float32)

    def collate(self, items: list[np.ndarray]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``{"x": (B, 2F) float32}``."""
        return {"x": torch.from_numpy(np.stack([np.asarray(a, np.float32) for a in items]))}

    def encoder(self) -> nn.Module:
        return build_tabular_encoder(len(self.spec.features), self.encoder_config)
