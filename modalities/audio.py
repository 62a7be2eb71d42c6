"""Audio (WAV): load -> validate -> mono, resample -> log-mel -> time tokens.

WAV files are parsed here (RIFF chunks + numpy): the stdlib ``wave`` module of Python 3.11
refuses IEEE-float and WAVE_FORMAT_EXTENSIBLE files, which recorders commonly write.
Supported: PCM 8/16/24/32-bit and float 32/64-bit, any channel count (mixed down to mono).
Resampling is polyphase (``scipy.signal.resample_poly``, anti-aliased); log-mel features use
``torch.stft`` and a Slaney-style mel filter bank. No torchaudio/librosa needed.

Clips longer than ``spec.max_seconds`` are cropped (``spec.crop``: keep the ``start`` or the
``center``); the crop is part of the spec and so of the cache key.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import model_validator
from torch import nn

from modalities.base import (
    EncoderConfig,
    SingleFileModality,
    Spec,
    Tokens,
    register_modality,
)
from modalities.errors import InputRejected, ReasonCode
from modalities.registry import Registry, encoder_registry

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
LOG_FLOOR = 1e-6  # log(LOG_FLOOR) is the value of silence and of padded frames


@dataclass
class Audio:
    """A decoded clip: float32 samples (frames, channels) in [-1, 1] and its sample rate."""

    samples: np.ndarray
    sample_rate: int


class AudioSpec(Spec):
    """How clips become log-mel features (hashed into the cache key)."""

    sample_rate: int = 16_000
    n_mels: int = 64
    n_fft: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    max_seconds: float = 30.0
    crop: Literal["start", "center"] = "start"

    @model_validator(mode="after")
    def _check(self) -> AudioSpec:
        if self.sample_rate < 1000 or self.n_mels < 1 or self.hop_length < 1:
            raise ValueError("sample_rate >= 1000, n_mels >= 1 and hop_length >= 1 required")
        if self.n_fft < 16 or self.max_seconds <= 0:
            raise ValueError("n_fft >= 16 and max_seconds > 0 required")
        if (self.f_max or self.sample_rate / 2) > self.sample_rate / 2 or self.f_min < 0:
            raise ValueError("need 0 <= f_min < f_max <= sample_rate / 2")
        return self


class AudioEncoderConfig(EncoderConfig):
    """Audio encoder: ``cnn`` (conv over mel x time) or ``transformer`` (cnn + self-attention).

    Both downsample time by 8 (one token per 80 ms at the default 10 ms hop).
    """

    name: str = "cnn"
    width: int = 32
    out_dim: int = 128
    layers: int = 2
    heads: int = 4


# ---------------------------------------------------------------------------- WAV reading


def _chunks(data: bytes) -> dict[bytes, bytes]:
    """RIFF sub-chunks of a WAVE file (first occurrence of each id)."""
    if len(data) < 12:
        raise InputRejected(ReasonCode.UNREADABLE, "audio file is empty or truncated; re-export it")
    if data[:4] not in (b"RIFF", b"RIFX", b"RF64") or data[8:12] != b"WAVE":
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT, "audio is not a WAV (RIFF/WAVE) file; convert to WAV"
        )
    if data[:4] != b"RIFF":
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            "big-endian (RIFX) and RF64 WAV are not supported; re-export as standard WAV",
        )
    out: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if len(body) < size:
            raise InputRejected(
                ReasonCode.UNREADABLE,
                f"WAV chunk {cid.decode('ascii', 'replace')!r} is truncated "
                f"({len(body)} of {size} bytes); re-export the file",
            )
        out.setdefault(cid, body)
        pos += 8 + size + (size & 1)  # chunks are word aligned
    return out


def _decode(fmt: int, bits: int, raw: bytes) -> np.ndarray:
    """Sample bytes -> float32 values in [-1, 1] (float formats: as stored)."""
    if fmt == _FLOAT and bits in (32, 64):
        return np.frombuffer(raw, dtype=f"<f{bits // 8}").astype(np.float32)
    if fmt != _PCM:
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT,
            f"WAV encoding {fmt} (compressed or unusual) is not supported; convert to PCM WAV",
        )
    if bits == 8:  # unsigned, 128 = zero
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return (v / float(1 << 23)).astype(np.float32)
    if bits in (16, 32):
        v = np.frombuffer(raw, dtype=f"<i{bits // 8}").astype(np.float64)
        return (v / float(1 << (bits - 1))).astype(np.float32)
    raise InputRejected(
        ReasonCode.UNSUPPORTED_FORMAT, f"{bits}-bit PCM is not supported; use 8/16/24/32-bit"
    )


def read_wav(data: bytes) -> Audio:
    """Parse WAV bytes; raise ``InputRejected`` with a reason code when unusable."""
    chunks = _chunks(data)
    fmt_chunk, body = chunks.get(b"fmt "), chunks.get(b"data")
    if fmt_chunk is None or len(fmt_chunk) < 16 or body is None:
        raise InputRejected(
            ReasonCode.UNREADABLE, "WAV file lacks its fmt or data chunk; re-export it"
        )
    fmt, channels, rate, _, _block, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if fmt == _EXTENSIBLE and len(fmt_chunk) >= 26:
        fmt = struct.unpack("<H", fmt_chunk[24:26])[0]  # first 2 bytes of the sub-format GUID
    if channels < 1 or rate < 1 or bits < 1:
        raise InputRejected(
            ReasonCode.UNREADABLE, "WAV header has zero channels, rate or bit depth"
        )
    width = (bits + 7) // 8
    frame = width * channels
    usable = len(body) - len(body) % frame
    if usable == 0:
        raise InputRejected(ReasonCode.UNREADABLE, "WAV file holds no audio samples; re-record it")
    values = _decode(fmt, width * 8, body[:usable]).reshape(-1, channels)
    if not np.isfinite(values).all():
        raise InputRejected(
            ReasonCode.NON_FINITE_VALUES, "audio holds NaN or infinite samples; fix the export"
        )
    return Audio(values, rate)


# ---------------------------------------------------------------------------- features


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling (anti-aliasing FIR) of a 1-D signal from ``src`` to ``dst`` Hz."""
    if src == dst:
        return x.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(src, dst)
    return resample_poly(x, dst // g, src // g).astype(np.float32)


def mel_filter_bank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters on the HTK mel scale, area-normalised (Slaney)."""

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_freqs)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (upper - lower))
    return torch.from_numpy(fb.T.astype(np.float32))


def log_mel(x: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Mono signal at ``spec.sample_rate`` -> float32 log-mel (n_mels, frames)."""
    sig = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if sig.numel() <= spec.n_fft // 2:  # reflect padding needs more than half a window
        sig = torch.nn.functional.pad(sig, (0, spec.n_fft // 2 + 1 - sig.numel()))
    window = torch.hann_window(spec.n_fft)
    stft = torch.stft(
        sig, spec.n_fft, spec.hop_length, window=window, center=True, return_complex=True
    )
    power = stft.abs() ** 2  # (n_freqs, frames)
    fb = mel_filter_bank(
        power.shape[0],
        spec.n_mels,
        spec.sample_rate,
        spec.f_min,
        spec.f_max or spec.sample_rate / 2,
    )
    return torch.log(fb.T @ power + LOG_FLOOR).numpy()


# ---------------------------------------------------------------------------- encoders


def _out_len(n: torch.Tensor) -> torch.Tensor:
    """Length after one conv with kernel 3, stride 2, padding 1."""
    return (n - 1) // 2 + 1


class AudioCNN(nn.Module):
    """Three stride-2 conv blocks over (mel, time), frequency flattened -> time tokens."""

    def __init__(self, n_mels: int, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        w = cfg.width
        chans = (w, 2 * w, 2 * w)
        blocks: list[nn.Module] = []
        c_in = 1
        for c in chans:
            blocks += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*blocks)
        f = n_mels
        for _ in chans:
            f = (f - 1) // 2 + 1
        self.proj = nn.Linear(chans[-1] * f, cfg.out_dim)
        self.out_dim = cfg.out_dim

    def features(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> Tokens:
        # Log-mel values are roughly in [-14, 10]; a fixed affine keeps them near unit scale
        # without per-clip statistics (which padding would distort).
        x = ((mel - math.log(LOG_FLOOR) / 2) / 7.0).unsqueeze(1)
        x = self.net(x)  # (B, C, F', T')
        b, c, f, t = x.shape
        values = self.proj(x.permute(0, 3, 1, 2).reshape(b, t, c * f))
        lengths = mel_mask.sum(1)
        for _ in range(3):
            lengths = _out_len(lengths)
        lengths = torch.where(mel_mask.any(1), lengths, torch.zeros_like(lengths))
        mask = torch.arange(t, device=mel.device)[None] < lengths[:, None]
        return Tokens(values, mask)

    def forward(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> Tokens:
        return self.features(mel, mel_mask)


class AudioTransformer(AudioCNN):
    """The CNN's tokens + sinusoidal positions + a Transformer encoder (padding masked)."""

    def __init__(self, n_mels: int, cfg: AudioEncoderConfig) -> None:
        super().__init__(n_mels, cfg)
        layer = nn.TransformerEncoderLayer(
            cfg.out_dim, cfg.heads, 4 * cfg.out_dim, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    def forward(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> Tokens:
        tok = self.features(mel, mel_mask)
        t, d = tok.values.shape[1:]
        pos = torch.arange(t, device=mel.device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d, 2, device=mel.device) * (-math.log(1e4) / d))
        pe = torch.zeros(t, d, device=mel.device)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
        # A clip with no valid frame would make attention rows all -inf: let it attend to
        # its padding (its tokens stay masked for fusion).
        pad = ~tok.mask & tok.mask.any(1, keepdim=True)
        values = self.encoder(tok.values + pe, src_key_padding_mask=pad)
        return Tokens(values, tok.mask)


AudioBuilder = Callable[[int, AudioEncoderConfig], nn.Module]
AUDIO_ENCODERS: Registry[AudioBuilder] = encoder_registry("audio encoder")
AUDIO_ENCODERS.add("cnn", AudioCNN)
AUDIO_ENCODERS.add("transformer", AudioTransformer)


def build_audio_encoder(n_mels: int, cfg: AudioEncoderConfig) -> nn.Module:
    """The encoder ``cfg.name`` names; ``forward(mel, mel_mask) -> Tokens``."""
    builder = AUDIO_ENCODERS.get(cfg.name)
    return builder(n_mels, cfg)


# ---------------------------------------------------------------------------- modality


@register_modality("audio")
class AudioModality(SingleFileModality):
    """WAV clips (e.g. auscultation, cough, speech) as log-mel time tokens."""

    kind = "audio"
    what = "audio"
    version = 1
    Spec = AudioSpec
    EncoderSpec = AudioEncoderConfig

    def load(self, source: Path | str) -> Audio:
        return read_wav(self.read_bytes(source))

    def preprocess(self, raw: Audio) -> np.ndarray:
        """Mono mixdown, resample, crop to ``max_seconds`` -> float16 log-mel (n_mels, T)."""
        spec = self.spec
        mono = raw.samples.mean(axis=1)
        x = resample(mono, raw.sample_rate, spec.sample_rate)
        limit = int(spec.max_seconds * spec.sample_rate)
        if len(x) > limit:
            start = 0 if spec.crop == "start" else (len(x) - limit) // 2
            x = x[start : start + limit]
        return log_mel(x, spec).astype(np.float16)

    def collate(self, items: list[np.ndarray]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Pad to the longest clip with the silence value; ``mel_mask`` marks real frames."""
        n_mels = self.spec.n_mels
        t_max = max([a.shape[1] for a in items] + [1])
        mel = torch.full((len(items), n_mels, t_max), math.log(LOG_FLOOR))
        mask = torch.zeros((len(items), t_max), dtype=torch.bool)
        for i, a in enumerate(items):
            mel[i, :, : a.shape[1]] = torch.from_numpy(np.asarray(a, dtype=np.float32))
            mask[i, : a.shape[1]] = True
        return {"mel": mel, "mel_mask": mask}

    def encoder(self) -> nn.Module:
        return build_audio_encoder(self.spec.n_mels, self.encoder_config)
