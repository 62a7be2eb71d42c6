"""Audio: WAV decoding (8/16/24-bit PCM, float), resampling, log-mel, padding, encoders."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.audio import (
    AUDIO_ENCODERS,
    AudioModality,
    AudioSpec,
    mel_filter_bank,
)
from modalities.errors import InputRejected, ReasonCode, UnknownNameError


def sine(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[:, None], channels, axis=1)


def write_pcm(path: Path, x: np.ndarray, rate: int, width: int) -> Path:
    """Write with the stdlib ``wave`` module (an independent encoder)."""
    if width == 1:
        data = np.clip(x * 128 + 128, 0, 255).astype(np.uint8).tobytes()
    elif width == 2:
        data = (x * 32767).astype("<i2").tobytes()
    elif width == 3:
        v = (x * (2**23 - 1)).astype("<i4")
        data = np.frombuffer(v.tobytes(), np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = (x * (2**31 - 1)).astype("<i4").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def write_float(path: Path, x: np.ndarray, rate: int, fmt_tag: int = 3) -> Path:
    """IEEE-float WAV by hand (``wave`` cannot write it)."""
    data = x.astype("<f4").tobytes()
    ch = x.shape[1]
    fmt = struct.pack("<HHIIHH", fmt_tag, ch, rate, rate * ch * 4, ch * 4, 32)
    if fmt_tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE with the float sub-format GUID
        guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, 32, 0) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def peak_hz(mel: np.ndarray, spec: AudioSpec) -> float:
    """Centre frequency of the mel band with the most energy."""
    fb = mel_filter_bank(spec.n_fft // 2 + 1, spec.n_mels, spec.sample_rate, 0, 8000).numpy()
    band = int(mel.astype(np.float32).mean(1).argmax())
    freqs = np.linspace(0, spec.sample_rate / 2, fb.shape[0])
    return float((freqs * fb[:, band]).sum() / fb[:, band].sum())


@pytest.fixture
def mod() -> AudioModality:
    return AudioModality()


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_depths_decode(tmp_path: Path, mod: AudioModality, width: int) -> None:
    x = sine(440, 0.25, 8000, channels=2)
    audio = mod.load(write_pcm(tmp_path / "a.wav", x, 8000, width))
    assert audio.sample_rate == 8000 and audio.samples.shape == x.shape
    tol = 1.5 / 128 if width == 1 else 1e-3
    assert np.abs(audio.samples - x).max() < tol


@pytest.mark.parametrize("tag", [3, 0xFFFE])
def test_float_wav_decodes(tmp_path: Path, mod: AudioModality, tag: int) -> None:
    x = sine(300, 0.1, 16000)
    audio = mod.load(write_float(tmp_path / "f.wav", x, 16000, tag))
    assert np.allclose(audio.samples, x, atol=1e-6)


@pytest.mark.parametrize(
    ("rate", "width", "freq"),
    [(44100, 2, 1000.0), (8000, 1, 500.0), (22050, 2, 3000.0), (16000, 4, 2000.0)],
)
def test_resampling_keeps_frequency(
    tmp_path: Path, mod: AudioModality, rate: int, width: int, freq: float
) -> None:
    path = write_pcm(tmp_path / "s.wav", sine(freq, 1.0, rate, channels=2), rate, width)
    mel = mod.preprocess(mod.load(path))
    assert mel.dtype == np.float16 and mel.shape == (64, 101)  # 1 s at a 10 ms hop
    assert abs(peak_hz(mel, mod.spec) - freq) < 0.1 * freq


def test_float_input_mel_peak(tmp_path: Path, mod: AudioModality) -> None:
    mel = mod.preprocess(mod.load(write_float(tmp_path / "f.wav", sine(1500, 0.5, 48000), 48000)))
    assert abs(peak_hz(mel, mod.spec) - 1500) < 150


def test_mono_mixdown_of_opposite_channels_is_silence(tmp_path: Path, mod: AudioModality) -> None:
    x = sine(440, 0.2, 16000)
    stereo = np.concatenate([x, -x], axis=1)
    mel = mod.preprocess(mod.load(write_float(tmp_path / "s.wav", stereo, 16000)))
    assert mel.astype(np.float32).max() < np.log(1e-5)


def test_any_length_and_crop(tmp_path: Path) -> None:
    mod = AudioModality(spec={"max_seconds": 0.5})
    tiny = mod.preprocess(
        mod.load(write_pcm(tmp_path / "t.wav", sine(440, 0.001, 16000), 16000, 2))
    )
    assert tiny.shape == (64, 2)  # 16 samples -> padded to one window
    long = mod.preprocess(mod.load(write_pcm(tmp_path / "l.wav", sine(440, 2.0, 16000), 16000, 2)))
    assert long.shape == (64, 51)  # cropped to 0.5 s
    # crop "center" keeps the middle: a tone only in the middle second survives it.
    x = np.zeros((48000, 1))
    x[16000:32000] = sine(1000, 1.0, 16000)
    path = write_pcm(tmp_path / "m.wav", x, 16000, 2)
    start = AudioModality(spec={"max_seconds": 0.5, "crop": "start"})
    centre = AudioModality(spec={"max_seconds": 0.5, "crop": "center"})
    assert start.preprocess(start.load(path)).astype(np.float32).max() < np.log(1e-5)
    assert centre.preprocess(centre.load(path)).astype(np.float32).max() > 0


def test_collate_pads_and_masks(mod: AudioModality) -> None:
    a = np.zeros((64, 30), np.float16)
    b = np.ones((64, 7), np.float16)
    batch = mod.collate([a, b])
    assert batch["mel"].shape == (2, 64, 30) and batch["mel"].dtype == torch.float32
    assert batch["mel_mask"].sum(1).tolist() == [30, 7]
    assert (batch["mel"][1, :, 7:] == np.log(1e-6)).all()  # padding looks like silence


@pytest.mark.parametrize("name", sorted(AUDIO_ENCODERS))
def test_encoders_mask_padded_frames(name: str) -> None:
    mod = AudioModality(encoder={"name": name, "width": 8, "out_dim": 16, "layers": 1})
    enc = mod.encoder().eval()
    batch = mod.collate([np.zeros((64, 100), np.float16), np.zeros((64, 20), np.float16)])
    tok = enc(**batch)
    assert tok.values.shape == (2, 13, 16) and enc.out_dim == 16
    assert tok.mask.sum(1).tolist() == [13, 3]
    assert torch.isfinite(tok.values).all()


def test_registry_and_unknown_encoder() -> None:
    assert sorted(AUDIO_ENCODERS) == ["cnn", "transformer"]
    with pytest.raises(UnknownNameError) as err:
        AudioModality(encoder={"name": "wav2vec"}).encoder()
    assert err.value.valid == sorted(AUDIO_ENCODERS)


def _riff(fmt_tag: int, bits: int, data: bytes) -> bytes:
    fmt = struct.pack("<HHIIHH", fmt_tag, 1, 8000, 8000 * bits // 8, bits // 8, bits)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", ReasonCode.UNREADABLE),
        (b"RIFF\x00\x00", ReasonCode.UNREADABLE),
        (b"ID3\x03\x00" + b"\x00" * 100, ReasonCode.UNSUPPORTED_FORMAT),  # an MP3
        (_riff(1, 16, b""), ReasonCode.UNREADABLE),  # no samples
        (_riff(1, 16, b"\x00\x01" * 10)[:-6], ReasonCode.UNREADABLE),  # truncated data
        (_riff(2, 4, b"\x00" * 10), ReasonCode.UNSUPPORTED_FORMAT),  # ADPCM
        (_riff(1, 64, b"\x00" * 16), ReasonCode.UNSUPPORTED_FORMAT),  # 64-bit PCM
        (_riff(3, 32, np.array([0.1, np.nan], "<f4").tobytes()), ReasonCode.NON_FINITE_VALUES),
        (_riff(3, 32, np.array([np.inf], "<f4").tobytes()), ReasonCode.NON_FINITE_VALUES),
    ],
)
def test_bad_files_rejected(tmp_path: Path, mod: AudioModality, content: bytes, code) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(InputRejected) as err:
        mod.load(path)
    assert err.value.code == code


def test_missing_file_and_content_hash(tmp_path: Path, mod: AudioModality) -> None:
    with pytest.raises(InputRejected) as err:
        mod.load(tmp_path / "nope.wav")
    assert err.value.code == ReasonCode.MISSING_FILE
    a = write_pcm(tmp_path / "a.wav", sine(440, 0.1, 8000), 8000, 2)
    b = write_pcm(tmp_path / "b.wav", sine(440, 0.1, 8000), 8000, 2)
    c = write_pcm(tmp_path / "c.wav", sine(450, 0.1, 8000), 8000, 2)
    assert mod.content_hash(a) == mod.content_hash(b) != mod.content_hash(c)
    assert mod.cache_key("x") != AudioModality(spec={"n_mels": 40}).cache_key("x")
