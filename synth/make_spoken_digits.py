"""Regenerate the spoken-digit clips shipped in ``synth/data/spoken_digits/``.

Why a shipped set: tests, CI and ``clinfuse synth --task digits`` must work offline on a
machine without a speech synthesiser, so the clips are made once with espeak-ng and
committed (about 1 MB). Only this script needs espeak-ng (Debian: ``apt-get install
espeak-ng``); the synthesiser itself is not a dependency of clinfuse.

Each clip is one English digit word ("zero" ... "nine") in one voice at one speed:
espeak-ng writes 22,050 Hz 16-bit mono; we trim leading/trailing silence (below -40 dB of
the clip's peak, 20 ms kept either side), resample to 8 kHz (polyphase, anti-aliased;
the rate of the Free Spoken Digit Dataset AV-MNIST uses) and write 16-bit PCM mono WAV.
``index.csv`` lists file, digit, voice and speed so a generator can hold voices out.

Run: ``python -m synth.make_spoken_digits [--out synth/data/spoken_digits]``.
espeak-ng's output depends on its version (recorded in ``index.csv``'s header comment):
regenerating with another version changes the bytes, not the design.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from synth.digits import WORDS

# espeak-ng voice = language + optional variant (+m*/+f* male/female timbres): accents and
# timbres differ, so a model must learn the word, not one voice.
VOICES = (
    "en-us",
    "en-us+f2",
    "en+m3",
    "en+f4",
    "en-gb-scotland",
    "en-029+f3",
    "en-gb-x-rp+m1",
    "en-gb-x-gbcwmd+f1",
)
SPEEDS = (140, 190)  # words per minute (espeak-ng's default is 175)
RATE = 8000
DEFAULT_OUT = Path(__file__).parent / "data" / "spoken_digits"


def clip_name(digit: int, voice: str, speed: int) -> str:
    """File name of one clip: ``7_en-us_f2_140.wav`` ('+' is avoided in file names)."""
    return f"{digit}_{voice.replace('+', '_')}_{speed}.wav"


def synthesise(word: str, voice: str, speed: int) -> tuple[np.ndarray, int]:
    """espeak-ng's WAV for ``word`` as float32 mono samples and their rate."""
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", word],
        check=True,
        capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(out)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width != 2 or channels != 1:
        raise RuntimeError(f"espeak-ng wrote {channels} channel(s) of {8 * width}-bit audio")
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0, rate


def trim(x: np.ndarray, rate: int, floor_db: float = -40.0, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``floor_db`` below the peak (keep a margin)."""
    loud = np.flatnonzero(np.abs(x) >= np.abs(x).max() * 10 ** (floor_db / 20))
    margin = int(margin_s * rate)
    return x[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def to_rate(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from ``src`` to ``dst`` Hz."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(src, dst)
    return resample_poly(x, dst // g, src // g).astype(np.float32)


def write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    """16-bit PCM mono WAV (clipped to [-1, 1])."""
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def make(out: Path = DEFAULT_OUT) -> int:
    """Write every (digit, voice, speed) clip and ``index.csv`` into ``out``; return the count."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    version = subprocess.run(
        ["espeak-ng", "--version"], check=True, capture_output=True, text=True
    ).stdout.split("Data at")[0].strip()  # no machine paths in the repo
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for digit, word in enumerate(WORDS):
        for voice in VOICES:
            for speed in SPEEDS:
                x, rate = synthesise(word, voice, speed)
                x = to_rate(trim(x, rate), rate, RATE)
                name = clip_name(digit, voice, speed)
                write_wav(out / name, x, RATE)
                rows.append({"file": name, "digit": digit, "voice": voice, "speed": speed})
    with open(out / "index.csv", "w", newline="") as f:
        f.write(f"# made by synth/make_spoken_digits.py with {version}\n")
        writer = csv.DictWriter(f, fieldnames=["file", "digit", "voice", "speed"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    n = make(parser.parse_args().out)
    print(f"wrote {n} clips")


if __name__ == "__main__":
    main()
