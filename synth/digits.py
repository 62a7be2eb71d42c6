"""Real handwritten digits + spoken digits: an offline audio-visual task like AV-MNIST.

Why: fusion must be shown to help on real data, and CI has no network. scikit-learn ships
1,797 real 8x8 handwritten digits (UCI); ``synth/data/spoken_digits/`` ships 160 spoken
digit clips made once with espeak-ng (``synth/make_spoken_digits.py``). Both modalities are
degraded per sample so that neither alone is perfect, as in AV-MNIST (images with energy
removed, audio mixed with noise), where fusion beats the best unimodal model:

- image: the 8x8 digit upsampled (bilinear) to ``image_size``, drawn with a ``thin`` or
  ``bold`` stroke (the blurred stroke's core only, or its edges lifted) on ``black`` or
  ``grey`` (0.3) paper, half the time inside a printed box (a 1-pixel frame, as on a form),
  shifted by up to 2 pixels, with probability ``occlusion`` a smudge (a flat 0.55 block,
  30-60 % of the side) over it, plus Gaussian noise (standard deviation ``image_noise`` on
  [0, 1]); 8-bit grey PNG. Stroke, paper, box and smudge are visible per-sample attributes
  (1/2 each) that a small CNN with pooled features can see, named by the caption;
- audio: a random clip of the digit (8 voices x 2 speeds), tape-speed changed by 0.9-1.1,
  gain -6..+6 dB, placed at a random time in a 1 s frame, mixed with white or pink noise at
  an SNR drawn from ``audio_snr`` (dB, measured over the speech); 8 kHz 16-bit mono WAV;
- text: a caption naming the digit and describing its image's attributes ("a bold
  handwritten seven on grey paper inside a box, partly covered by a smudge"), from
  ``CAPTIONS``: it pairs with its own image, not just its class (instance-level retrieval),
  and names the digit for zero-shot use; it gives the label away, so the classification
  recipe leaves it out.

``task="vqa"``: image + question ("is it even?", "is it greater than five?", "is it a
seven?" and each one's complement: "is it odd?", "is it five or less?", "is it not a
seven?"), label yes/no. For every question family and parameter the question and its
complement are equally likely, and the answer is yes half the time, with the digit drawn
from the matching set: so P(yes | question) = 1/2 and P(yes | digit) = 1/2 by construction
-- each modality alone is at chance, the answer needs both. VQA images have no looks (plain
stroke, black paper, no box), no smudge and less noise by default (``IMAGE_DEFAULTS``).

Output (deterministic in the seed): ``images/*.png``, ``audio/*.wav`` (digits task),
``manifest.csv`` (``patient_id, image, audio, text, label, split``; VQA: no audio) with
paths relative to ``out``, and ``samples.csv`` recording how each sample was made (digit,
source index, stroke, paper, box, smudge, voice, SNR, question family) for tests and analysis.
"""

from __future__ import annotations

import csv
import io
import time
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLIPS = Path(__file__).parent / "data" / "spoken_digits"
RATE = 8000
FRAME_SECONDS = 1.0
SPLITS = (("train", 0.7), ("val", 0.15), ("test", 0.15))
# (image_noise, occlusion) by task: VQA's images are clean (the digit must be readable for
# the answer to be learnable from 2,000 samples; docs/tasks.md "VQA: results").
IMAGE_DEFAULTS = {"digits": (0.25, 0.5), "vqa": (0.1, 0.0)}
STROKES = ("thin", "bold")
PAPERS = {"black": 0.0, "grey": 0.3}  # background level on [0, 1]
BOX_LEVEL = 0.9  # the printed box of a form field
SMUDGE_LEVEL = 0.55
# {w} digit word, {stroke} thin/bold, {paper} black/grey, {box} and {block} from the phrases.
CAPTIONS = (
    "a {stroke} handwritten {w} on {paper} paper{box}{block}",
    "the digit {w}, written by hand with a {stroke} pen on {paper} paper{box}{block}",
    "a scanned handwritten {w} in {stroke} strokes on {paper} paper{box}{block}",
    "a picture of the number {w} in {stroke} lines on {paper} paper{box}{block}",
)
BOX_PHRASES = {True: " inside a box", False: ""}
BLOCK_PHRASES = {True: ", partly covered by a smudge", False: ", fully visible"}
Task = Literal["digits", "vqa"]


@dataclass
class DigitsResult:
    """What ``synth_digits`` wrote."""

    out: Path
    manifest: Path
    n: int
    task: str
    seconds: float


# ---------------------------------------------------------------------------- sources


@cache
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 real 8x8 digits as float32 in [0, 1] and their labels (offline)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(int)


@cache
def spoken_clips() -> dict[int, list[tuple[str, np.ndarray]]]:
    """digit -> [(clip file name, float32 samples at 8 kHz)] from the shipped clip set."""
    out: dict[int, list[tuple[str, np.ndarray]]] = {d: [] for d in range(10)}
    with open(CLIPS / "index.csv", newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for row in rows:
        with wave.open(str(CLIPS / row["file"])) as w:
            if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise RuntimeError(f"clip {row['file']} is not 8 kHz 16-bit mono")
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        out[int(row["digit"])].append((row["voice"], pcm.astype(np.float32) / 32768.0))
    return out


# ---------------------------------------------------------------------------- image


@dataclass(frozen=True)
class ImageLook:
    """The visible per-sample attributes of a digit image (named by its caption)."""

    stroke: str
    paper: str
    boxed: bool
    occluded: bool


def degrade_image(
    img8: np.ndarray, rng: np.random.Generator, size: int, noise: float, occlusion: float,
    looks: bool = True,
) -> tuple[np.ndarray, ImageLook]:
    """8x8 digit -> (size, size) uint8 grey: upsample, stroke, paper, box, shift, smudge,
    noise. ``looks=False`` (VQA: no caption names them) keeps the plain stroke on black
    paper without a box and draws no look at random."""
    from PIL import Image

    src = Image.fromarray(np.ascontiguousarray(img8, dtype=np.float32))  # mode "F"
    up = np.asarray(src.resize((size, size), Image.Resampling.BILINEAR))
    if looks:
        stroke = STROKES[int(rng.integers(2))]
        paper = tuple(PAPERS)[int(rng.integers(2))]
        boxed = bool(rng.random() < 0.5)
    else:
        stroke, paper, boxed = "plain", "black", False
    if stroke == "bold":  # widen: lift the blurred edges of the stroke
        up = np.clip(up * 1.5, 0.0, 1.0) ** 0.8
    elif stroke == "thin":  # narrow: keep the stroke's core only
        up = np.clip((up - 0.2) / 0.8, 0.0, 1.0)
    dy, dx = rng.integers(-2, 3, size=2)
    x = np.full_like(up, PAPERS[paper])
    if boxed:  # a 1-pixel box one pixel inside the border
        x[1, 1:-1] = x[-2, 1:-1] = x[1:-1, 1] = x[1:-1, -2] = BOX_LEVEL
    ys, xs = slice(max(0, dy), size + min(0, dy)), slice(max(0, dx), size + min(0, dx))
    x[ys, xs] = np.maximum(
        x[ys, xs], up[max(0, -dy) : size - max(0, dy), max(0, -dx) : size - max(0, dx)])
    occluded = bool(rng.random() < occlusion)
    h, w = (rng.uniform(0.3, 0.6, size=2) * size).astype(int)
    top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    if occluded:
        x[top : top + h, left : left + w] = SMUDGE_LEVEL
    x = np.clip(x + rng.normal(0.0, noise, x.shape), 0.0, 1.0)
    return (x * 255.0).round().astype(np.uint8), ImageLook(stroke, paper, boxed, occluded)


def png_bytes(pixels: np.ndarray) -> bytes:
    """8-bit grey PNG of a (H, W) uint8 array (no timestamps: same pixels, same bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def caption_for(digit: int, look: ImageLook, template: int) -> str:
    """The caption ``CAPTIONS[template]`` for ``digit`` drawn as ``look``."""
    return CAPTIONS[template].format(w=WORDS[digit], stroke=look.stroke, paper=look.paper,
                                     box=BOX_PHRASES[look.boxed],
                                     block=BLOCK_PHRASES[look.occluded])


# ---------------------------------------------------------------------------- audio


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance 1/f noise (white noise shaped in the frequency domain)."""
    spec = np.fft.rfft(rng.normal(size=n))
    f = np.arange(spec.size, dtype=float)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / x.std()


def degrade_audio(
    clip: np.ndarray, rng: np.random.Generator, snr_db: float
) -> np.ndarray:
    """A clean clip -> 1 s at 8 kHz: speed change, gain, time shift, noise at ``snr_db``."""
    from scipy.signal import resample_poly

    clip = resample_poly(clip, 100, int(rng.integers(90, 111))).astype(np.float64)
    clip *= 10 ** (rng.uniform(-6.0, 6.0) / 20) * 0.5 / max(np.abs(clip).max(), 1e-6)
    n = int(FRAME_SECONDS * RATE)
    clip = clip[:n]
    start = int(rng.integers(0, n - clip.size + 1))
    speech = np.zeros(n)
    speech[start : start + clip.size] = clip
    noise = rng.normal(size=n) if rng.random() < 0.5 else _pink(n, rng)
    power = float(np.mean(clip**2))  # over the speech, not the padded frame
    mixed = speech + noise * np.sqrt(power / 10 ** (snr_db / 10))
    peak = np.abs(mixed).max()
    return mixed / peak * 0.95 if peak > 0.95 else mixed  # scale both: the SNR is kept


def wav_bytes(x: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit PCM mono WAV of float samples in [-1, 1]."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767.0).round().astype("<i2").tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------------------- VQA


def _article(word: str) -> str:
    """English article by sound: "an eight", "a one" (of the digit words only "eight")."""
    return "an" if word == "eight" else "a"


def vqa_questions() -> list[tuple[str, str, frozenset[int]]]:
    """Every (family, question, digits answered yes); each question has its complement."""
    qs: list[tuple[str, str, frozenset[int]]] = [
        ("parity", "is it even?", frozenset({0, 2, 4, 6, 8})),
        ("parity", "is it odd?", frozenset({1, 3, 5, 7, 9})),
    ]
    for t in range(1, 9):
        above = frozenset(range(t + 1, 10))
        qs.append((f"greater:{t}", f"is it greater than {WORDS[t]}?", above))
        qs.append((f"greater:{t}", f"is it {WORDS[t]} or less?", frozenset(range(10)) - above))
    for k, w in enumerate(WORDS):
        qs.append((f"is:{k}", f"is it {_article(w)} {w}?", frozenset({k})))
        qs.append((f"is:{k}", f"is it not {_article(w)} {w}?", frozenset(range(10)) - {k}))
    return qs


def vqa_table() -> list[tuple[int, str, str, bool, float]]:
    """Every (digit, family, question, answer, probability) a VQA sample can be.

    Family kind (parity / threshold / identity) uniform, then its parameter, then the
    question or its complement, then yes or no, then a digit from the matching set: so
    P(yes | question) = P(yes | digit) = 1/2 exactly (tests check the table).
    """
    by_family: dict[str, list[tuple[str, frozenset[int]]]] = {}
    for fam, q, yes in vqa_questions():
        by_family.setdefault(fam, []).append((q, yes))
    kinds: dict[str, list[str]] = {}
    for fam in by_family:
        kinds.setdefault(fam.split(":")[0], []).append(fam)
    table = []
    for kind in sorted(kinds):
        for fam in kinds[kind]:
            p_question = 1 / len(kinds) / len(kinds[kind]) / 2
            for question, yes_set in by_family[fam]:
                for answer in (True, False):
                    pool = sorted(yes_set if answer else frozenset(range(10)) - yes_set)
                    for digit in pool:
                        table.append((digit, fam, question, answer, p_question / 2 / len(pool)))
    return table


def vqa_plan(n: int, rng: np.random.Generator) -> list[tuple[int, str, str, bool]]:
    """n (digit, family, question, answer) draws from ``vqa_table``."""
    table = vqa_table()
    p = np.array([row[4] for row in table])
    return [table[i][:4] for i in rng.choice(len(table), size=n, p=p / p.sum())]


# ---------------------------------------------------------------------------- writer


def _assign_splits(labels: list[str], rng: np.random.Generator) -> list[str]:
    """Stratified train/val/test (70/15/15) per label value."""
    out = [""] * len(labels)
    for value in sorted(set(labels)):
        idx = [i for i, v in enumerate(labels) if v == value]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        cut1 = round(len(idx) * SPLITS[0][1])
        cut2 = cut1 + round(len(idx) * SPLITS[1][1])
        for j, i in enumerate(idx):
            out[i] = "train" if j < cut1 else "val" if j < cut2 else "test"
    return out


def _balanced_digits(n: int, rng: np.random.Generator) -> list[int]:
    """n digits, every class n // 10 or n // 10 + 1 times, in random order."""
    digits = [i % 10 for i in range(n)]
    return [digits[j] for j in rng.permutation(n)]


def synth_digits(
    out: Path | str,
    n: int = 600,
    seed: int = 0,
    task: Task = "digits",
    image_size: int = 28,
    image_noise: float | None = None,
    occlusion: float | None = None,
    audio_snr: tuple[float, ...] = (-12.0, -6.0, 0.0, 6.0),
) -> DigitsResult:
    """Write ``n`` samples of ``task`` into ``out`` (see the module docstring).

    ``image_noise`` and ``occlusion`` default per task (``IMAGE_DEFAULTS``): the digits
    task degrades both modalities so that each alone is imperfect; VQA keeps the image
    clean, since the question already makes each modality alone useless.
    """
    from modalities.errors import ConfigError, UnknownNameError

    if task not in ("digits", "vqa"):
        raise UnknownNameError("digits task", task, ["digits", "vqa"])
    default_noise, default_occlusion = IMAGE_DEFAULTS[task]
    image_noise = default_noise if image_noise is None else image_noise
    occlusion = default_occlusion if occlusion is None else occlusion
    if n < 1 or image_size < 8 or image_noise < 0 or not 0 <= occlusion <= 1 or not audio_snr:
        raise ConfigError("synth: need samples >= 1, image size >= 8, image noise >= 0, "
                          "0 <= occlusion <= 1 and at least one audio SNR level")
    t0 = time.perf_counter()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if task == "digits":
        (out / "audio").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    images, targets = _digit_images()
    by_class = {d: np.flatnonzero(targets == d) for d in range(10)}
    order = {d: rng.permutation(idx) for d, idx in by_class.items()}  # sources cycle
    used = dict.fromkeys(range(10), 0)
    if task == "digits":
        plan = [(d, "", "", False) for d in _balanced_digits(n, rng)]
    else:
        plan = vqa_plan(n, rng)
    rows, meta = [], []
    for i, (digit, family, question, answer) in enumerate(plan):
        src = int(order[digit][used[digit] % len(order[digit])])
        used[digit] += 1
        sid = f"{task}-{i:05d}"
        pixels, look = degrade_image(images[src], rng, image_size, image_noise, occlusion,
                                     looks=task == "digits")
        (out / "images" / f"{sid}.png").write_bytes(png_bytes(pixels))
        row = {"patient_id": sid, "image": f"images/{sid}.png"}
        info = {"patient_id": sid, "digit": digit, "source_index": src,
                "stroke": look.stroke, "paper": look.paper, "boxed": look.boxed,
                "occluded": look.occluded}
        if task == "digits":
            clips = spoken_clips()[digit]
            voice, clip = clips[int(rng.integers(len(clips)))]
            snr = float(audio_snr[int(rng.integers(len(audio_snr)))])
            (out / "audio" / f"{sid}.wav").write_bytes(wav_bytes(degrade_audio(clip, rng, snr)))
            caption = caption_for(digit, look, int(rng.integers(len(CAPTIONS))))
            row |= {"audio": f"audio/{sid}.wav", "text": caption, "label": str(digit)}
            info |= {"voice": voice, "snr_db": snr}
        else:
            row |= {"text": question, "label": "yes" if answer else "no"}
            info |= {"family": family}
        rows.append(row)
        meta.append(info)
    for row, split in zip(rows, _assign_splits([r["label"] for r in rows], rng), strict=True):
        row["split"] = split
    _write_csv(out / "manifest.csv", rows)
    _write_csv(out / "samples.csv", meta)
    return DigitsResult(out, out / "manifest.csv", n, task, time.perf_counter() - t0)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
