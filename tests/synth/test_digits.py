"""Handwritten + spoken digits (synth/digits.py): deterministic, valid files, balanced
classes, a VQA variant each modality alone cannot answer, and an ingest that accepts it."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import wave
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusion.tasks import cohort_task
from modalities.audio import read_wav
from modalities.cache import TensorCache
from modalities.image import read_image
from modalities.ingest import ingest_manifest
from synth.digits import (
    CLIPS,
    WORDS,
    ImageLook,
    caption_for,
    degrade_audio,
    spoken_clips,
    synth_digits,
    vqa_plan,
    vqa_questions,
    vqa_table,
)
from workflows.config import load_config


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    synth_digits(out, n=50, seed=3)
    return out


@pytest.fixture(scope="module")
def vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vqa")
    synth_digits(out, n=40, seed=3, task="vqa")
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*"))}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, digits: Path) -> None:
    synth_digits(tmp_path / "again", n=50, seed=3)
    assert _tree(tmp_path / "again") == _tree(digits)
    synth_digits(tmp_path / "other", n=50, seed=4)
    other = _tree(tmp_path / "other")
    assert other.keys() == _tree(digits).keys()
    assert other["images/digits-00000.png"] != _tree(digits)["images/digits-00000.png"]


def test_manifest_columns_classes_balanced_and_stratified(digits: Path) -> None:
    rows = _rows(digits / "manifest.csv")
    assert list(rows[0]) == ["patient_id", "image", "audio", "text", "label", "split"]
    assert len({r["patient_id"] for r in rows}) == 50
    assert Counter(r["label"] for r in rows) == {str(d): 5 for d in range(10)}
    for d in range(10):  # 5 per class: 4 train (70 %), 1 val or test, never an empty train
        splits = Counter(r["split"] for r in rows if r["label"] == str(d))
        assert splits["train"] == 4 and splits["val"] + splits["test"] == 1
    for r in rows:  # the caption names the digit (retrieval text, not clinical)
        assert WORDS[int(r["label"])] in re.findall(r"[a-z]+", r["text"])


def test_captions_describe_the_visible_attributes_of_their_own_image(digits: Path) -> None:
    rows, meta = _rows(digits / "manifest.csv"), _rows(digits / "samples.csv")
    assert list(meta[0]) == ["patient_id", "digit", "source_index", "stroke", "paper", "boxed",
                             "occluded", "voice", "snr_db"]
    for r, m in zip(rows, meta, strict=True):
        words = re.findall(r"[a-z]+", r["text"])
        assert m["stroke"] in words and m["paper"] in words and m["digit"] == r["label"]
        assert ("box" in words) == (m["boxed"] == "True")
        assert ("smudge" in words) == (m["occluded"] == "True")
    for column in ("stroke", "paper", "boxed", "occluded"):  # every attribute takes both values
        assert len({m[column] for m in meta}) == 2
    # Captions single out instances: far more distinct captions than digits.
    assert len({r["text"] for r in rows}) > 30
    assert {caption_for(3, ImageLook("bold", "grey", True, True), t) for t in range(4)} == {
        "a bold handwritten three on grey paper inside a box, partly covered by a smudge",
        "the digit three, written by hand with a bold pen on grey paper inside a box, partly "
        "covered by a smudge",
        "a scanned handwritten three in bold strokes on grey paper inside a box, partly "
        "covered by a smudge",
        "a picture of the number three in bold lines on grey paper inside a box, partly "
        "covered by a smudge",
    }
    assert caption_for(0, ImageLook("thin", "black", False, False), 0) == (
        "a thin handwritten zero on black paper, fully visible")


def test_stroke_paper_box_and_smudge_are_visible_in_the_pixels(tmp_path: Path) -> None:
    synth_digits(tmp_path, n=200, seed=1, image_noise=0.0, occlusion=0.5)
    meta = _rows(tmp_path / "samples.csv")
    px = [read_image((tmp_path / f"images/{m['patient_id']}.png").read_bytes()).pixels[0]
          for m in meta]
    stroke = np.array([m["stroke"] for m in meta])
    paper = np.array([m["paper"] for m in meta])
    boxed = np.array([m["boxed"] == "True" for m in meta])
    occluded = np.array([m["occluded"] == "True" for m in meta])
    corner = np.array([p[0, 0] for p in px])  # outside the box, never under a stroke
    assert np.allclose(corner[~occluded & (paper == "black")], 0.0, atol=0.003)
    assert np.allclose(corner[~occluded & (paper == "grey")], 0.3, atol=0.003)
    ring = np.array([np.mean(np.r_[p[1, 1:-1], p[-2, 1:-1], p[1:-1, 1], p[1:-1, -2]] > 0.85)
                     for p in px])  # share of the box's pixels lit
    assert ring[~occluded & boxed].min() == 1.0 and ring[~occluded & ~boxed].max() < 0.5
    lit = np.array([(p > 0.6).mean() for p in px])
    plain = ~boxed & ~occluded
    assert lit[plain & (stroke == "bold")].mean() > 1.4 * lit[plain & (stroke == "thin")].mean()
    smudge = np.array([np.isclose(p, 0.55, atol=0.003).mean() for p in px])
    assert smudge[~occluded].max() < 0.02 < smudge[occluded].min()


def test_sources_are_real_digits_of_the_label(digits: Path) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    meta = _rows(digits / "samples.csv")
    assert all(target[int(m["source_index"])] == int(m["digit"]) for m in meta)
    assert len({m["source_index"] for m in meta}) == 50  # no image reused in a small set
    assert {m["occluded"] for m in meta} == {"True", "False"}
    assert len({m["snr_db"] for m in meta}) > 1 and len({m["voice"] for m in meta}) > 4


def test_png_and_wav_are_valid_and_read_by_the_modalities(digits: Path) -> None:
    for r in _rows(digits / "manifest.csv"):
        data = (digits / r["image"]).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "L", (28, 28))
        assert read_image(data).pixels.shape == (1, 28, 28)
        with wave.open(str(digits / r["audio"])) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
            assert w.getnframes() == 8000
        audio = read_wav((digits / r["audio"]).read_bytes())
        assert audio.sample_rate == 8000 and audio.samples.shape == (8000, 1)
        assert 0.05 < np.abs(audio.samples).max() <= 0.96


def test_image_noise_and_occlusion_degrade_the_image(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    synth_digits(clean, n=10, seed=0, image_noise=0.0, occlusion=0.0)
    synth_digits(tmp_path / "noisy", n=10, seed=0, image_noise=0.3, occlusion=1.0)
    a = read_image((clean / "images/digits-00000.png").read_bytes()).pixels
    b = read_image((tmp_path / "noisy/images/digits-00000.png").read_bytes()).pixels
    assert a.max() > 0.6 and np.abs(a - b).mean() > 0.1


def test_audio_noise_follows_the_snr() -> None:
    clip = spoken_clips()[7][0][1]

    def speech_share(snr: float) -> float:
        x = degrade_audio(clip, np.random.default_rng(0), snr)
        env = np.convolve(x**2, np.ones(400) / 400, mode="same")
        return float(env.max() / env.mean())  # peaky when speech dominates, flat in noise

    assert speech_share(30.0) > 2 * speech_share(-12.0)


def test_shipped_clip_set_is_complete_small_and_8khz() -> None:
    clips = spoken_clips()
    assert sorted(clips) == list(range(10))
    assert {len(v) for v in clips.values()} == {16}  # 8 voices x 2 speeds per digit
    wavs = sorted(CLIPS.glob("*.wav"))
    assert len(wavs) == 160 and sum(p.stat().st_size for p in wavs) < 1_500_000
    for _, x in clips[3]:
        assert 0.2 < x.size / 8000 < 1.0 and np.abs(x).max() > 0.1  # trimmed, not silent


def test_vqa_each_modality_alone_is_at_chance_exactly() -> None:
    table = vqa_table()
    assert abs(sum(p for *_, p in table) - 1.0) < 1e-9
    yes_by, all_by = defaultdict(float), defaultdict(float)
    for digit, _, question, answer, p in table:
        for key in (("digit", digit), ("question", question)):
            all_by[key] += p
            yes_by[key] += p * answer
    assert len([k for k in all_by if k[0] == "question"]) == len(vqa_questions())
    for key, total in all_by.items():
        assert abs(yes_by[key] / total - 0.5) < 1e-9, key


def test_vqa_answer_is_a_function_of_digit_and_question() -> None:
    rules = {q: yes for _, q, yes in vqa_questions()}
    plan = vqa_plan(4000, np.random.default_rng(0))
    seen: dict[str, set[bool]] = defaultdict(set)
    by_digit: dict[int, set[bool]] = defaultdict(set)
    for digit, _, question, answer in plan:
        assert answer == (digit in rules[question])
        seen[question].add(answer)
        by_digit[digit].add(answer)
    assert set(seen) == set(rules) and all(v == {True, False} for v in seen.values())
    assert all(v == {True, False} for v in by_digit.values())
    share = np.mean([a for *_, a in plan])
    assert abs(share - 0.5) < 4 * 0.5 / np.sqrt(len(plan))


def test_vqa_manifest(vqa: Path) -> None:
    rows, meta = _rows(vqa / "manifest.csv"), _rows(vqa / "samples.csv")
    assert list(rows[0]) == ["patient_id", "image", "text", "label", "split"]
    rules = {q: yes for _, q, yes in vqa_questions()}
    for r, m in zip(rows, meta, strict=True):
        assert r["label"] == ("yes" if int(m["digit"]) in rules[r["text"]] else "no")
    assert {r["label"] for r in rows} == {"yes", "no"}
    assert not (vqa / "audio").exists()


def test_vqa_images_are_clean_by_default_and_questions_read_as_english(vqa: Path) -> None:
    meta = _rows(vqa / "samples.csv")
    # No caption names a look, so VQA draws none: plain stroke, black paper, no box, no
    # smudge (its default occlusion is 0).
    assert {(m["stroke"], m["paper"], m["boxed"], m["occluded"]) for m in meta} == {
        ("plain", "black", "False", "False")}
    pixels = np.stack([np.asarray(Image.open(vqa / r["image"]), dtype=float) / 255.0
                       for r in _rows(vqa / "manifest.csv")])
    assert np.median(pixels) < 0.2  # black paper with noise SD 0.1, not grey paper
    questions = {q for _, q, _ in vqa_questions()}
    assert "is it a one?" in questions and "is it an eight?" in questions
    assert not any(" an one" in q or " a eight" in q for q in questions)


def test_in_process_ingest_accepts_every_row_and_keeps_the_text(
    digits: Path, vqa: Path, tmp_path: Path
) -> None:
    with_captions = load_config("digits", ["cohort.modalities.text={type: note}"]).cohort
    s = ingest_manifest(digits / "manifest.csv", with_captions, digits, tmp_path / "d",
                        labels=cohort_task(with_captions))
    assert (s["accepted"], s["quarantined"]) == (150, 0)
    assert _cached_texts(tmp_path / "d") == {r["text"] for r in _rows(digits / "manifest.csv")}
    vqa_cohort = load_config("digits_vqa").cohort
    s = ingest_manifest(vqa / "manifest.csv", vqa_cohort, vqa, tmp_path / "v",
                        labels=cohort_task(vqa_cohort))
    assert (s["accepted"], s["quarantined"]) == (80, 0)
    # De-identification leaves captions and questions as written (no digit word is PHI).
    assert _cached_texts(tmp_path / "v") == {r["text"] for r in _rows(vqa / "manifest.csv")}


def _cached_texts(prepared: Path) -> set[str]:
    import pandas as pd

    cohort = pd.read_parquet(prepared / "cohort.parquet")
    cache = TensorCache(prepared / "cache")
    return {cache.get("note", k) for k in cohort["text_key"]}  # cached by modality type


@pytest.mark.slow
@pytest.mark.parametrize(("fixture", "recipe", "inputs"), [("digits", "digits", 100),
                                                           ("vqa", "digits_vqa", 80)])
def test_real_cli_ingest_accepts_every_row(
    fixture: str, recipe: str, inputs: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import json

    data: Path = request.getfixturevalue(fixture)
    res = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "ingest", str(data / "manifest.csv"),
         "--out", str(tmp_path / "prepared"), "--config", recipe, "--json", "--no-progress"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert (summary["inputs"], summary["accepted"], summary["quarantined"]) == (inputs, inputs, 0)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workflows.cli", "synth", *args],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def test_cli_synth_task_digits_writes_the_same_set(tmp_path: Path, digits: Path) -> None:
    import json

    res = _cli(str(tmp_path / "d"), "--task", "digits", "--samples", "50", "--seed", "3",
               "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["config"] == "digits"
    assert _tree(tmp_path / "d") == _tree(digits)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "nope"], "valid names: clinical, digits, vqa"),
        (["--task", "vqa", "--bad-inputs", "2"], "--task clinical only"),
        (["--image-noise", "0.1"], "--task digits and vqa only"),
        (["--task", "vqa", "--audio-snr=-3"], "vqa has no audio"),
        (["--task", "digits", "--audio-snr=loud"], "numbers in dB"),
        (["--task", "digits", "--occlusion", "2"], "0 <= occlusion <= 1"),
    ],
)
def test_cli_synth_rejects_bad_task_options_in_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    res = _cli(str(tmp_path / "x"), *args)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
