"""The demo's one-line verdict: best fusion vs best unimodal baseline by a chosen metric,
CIs apart or not, with the test rows behind it (AUROC for clinical, accuracy for digits)."""

from __future__ import annotations

from workflows.demo import fusion_verdict


def _row(name: str, mods: str, acc: float, lo: float, hi: float) -> dict:
    return {"variant": name, "modalities": mods, "n_test": 450.0, "accuracy": acc,
            "accuracy_ci_low": lo, "accuracy_ci_high": hi}


def test_accuracy_verdict_compares_against_the_best_baseline() -> None:
    rows = [_row("concat", "audio+image", 0.91, 0.88, 0.93),
            _row("unimodal_audio", "audio", 0.76, 0.72, 0.80),
            _row("unimodal_image", "image", 0.72, 0.68, 0.76)]
    v = fusion_verdict(rows, "accuracy", "samples")
    assert v["separated"] and v["baseline"] == "unimodal_audio" and v["n_test"] == 450
    assert "450 test samples: 95% CIs do not overlap: fusion wins" in v["text"]
    assert "accuracy 0.910 [0.880, 0.930]" in v["text"]


def test_overlapping_cis_are_not_a_win() -> None:
    rows = [_row("concat", "audio+image", 0.80, 0.75, 0.85),
            _row("unimodal_audio", "audio", 0.76, 0.72, 0.80)]
    v = fusion_verdict(rows, "accuracy", "samples")
    assert not v["separated"] and v["text"].endswith("overlap: not separable")
