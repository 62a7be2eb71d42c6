"""The ``ecg`` modality: one lead as a CSV column or a 1-D ``.npy``, encoded by a 1-D CNN."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn

from modalities.base import EncoderConfig, SingleFileModality, Spec, Tokens, register_modality
from modalities.errors import InputRejected, ReasonCode


class EcgSpec(Spec):
    """Fixed length after crop/pad; each signal is z-scored on its own."""

    length: int = Field(256, ge=16)
    min_samples: int = Field(32, ge=1)


class EcgEncoderConfig(EncoderConfig):
    name: str = "conv1d"
    width: int = Field(16, ge=1)
    out_dim: int = Field(32, ge=1)


class EcgConv(nn.Module):
    """Three stride-2 1-D conv blocks: one token per remaining time step."""

    def __init__(self, cfg: EcgEncoderConfig) -> None:
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            nn.Conv1d(1, w, 7, stride=2, padding=3), nn.GELU(),
            nn.Conv1d(w, 2 * w, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv1d(2 * w, cfg.out_dim, 3, stride=2, padding=1),
        )  # fmt: skip
        self.out_dim = cfg.out_dim

    def forward(self, x: torch.Tensor) -> Tokens:
        values = self.net(x).transpose(1, 2)  # (B, T', D)
        return Tokens(values, torch.ones(values.shape[:2], dtype=torch.bool, device=x.device))


@register_modality("ecg")
class EcgModality(SingleFileModality):
    """A single-lead ECG trace."""

    kind = "signal"
    what = "ecg"
    version = 1
    Spec = EcgSpec
    EncoderSpec = EcgEncoderConfig

    def load(self, source: Path | str) -> np.ndarray:
        data = self.read_bytes(source)
        try:
            if str(source).endswith(".npy"):
                sig = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                sig = np.loadtxt(io.StringIO(data.decode("utf-8")), delimiter=",", ndmin=1)
        except (ValueError, UnicodeDecodeError, OSError):
            raise InputRejected(
                ReasonCode.UNREADABLE, "ecg file is not a numeric CSV column or .npy array"
            ) from None
        sig = np.asarray(sig, dtype=np.float64).squeeze()
        if sig.ndim != 1:
            raise InputRejected(ReasonCode.INCONSISTENT_SHAPE, "ecg must be one lead (1-D)")
        if not np.isfinite(sig).all():
            raise InputRejected(ReasonCode.NON_FINITE_VALUES, "ecg holds NaN/inf values")
        if sig.size < self.spec.min_samples:
            raise InputRejected(ReasonCode.TOO_FEW_SLICES, "ecg is shorter than min_samples")
        return sig

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Crop/pad to ``spec.length`` and z-score -> float16 (1, length)."""
        n = self.spec.length
        x = np.zeros(n) if raw.size < n else raw[:n]
        if raw.size < n:
            x[: raw.size] = raw
        x = (x - x.mean()) / (x.std() + 1e-6)
        return x[None].astype(np.float16)

    def collate(self, items: list[np.ndarray]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"x": torch.from_numpy(np.stack([np.asarray(a, np.float32) for a in items]))}

    def encoder(self) -> nn.Module:
        return EcgConv(self.encoder_config)

