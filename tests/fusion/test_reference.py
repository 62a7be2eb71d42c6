"""The drift reference training stores with a model (``fusion.reference``)."""

from __future__ import annotations

import numpy as np

from fusion.reference import score_histogram, score_reference


def test_reference_histogram_counts_every_score_once() -> None:
    p = np.array([0.0, 0.05, 0.1, 0.55, 0.999, 1.0])
    ref = score_reference(p, {"ct": 0.9}, 0.3)
    assert ref["score_histogram"]["edges"] == np.linspace(0, 1, 11).tolist()
    # np.histogram's last bin is closed: 1.0 counts in [0.9, 1.0]; 0.1 opens the second bin.
    assert ref["score_histogram"]["counts"] == [[2, 1, 0, 0, 0, 1, 0, 0, 0, 2]]
    assert ref["presence"] == {"ct": 0.9} and ref["prior"] == 0.3
    assert "presence" not in score_reference(p)


def test_multicolumn_reference_has_one_histogram_per_column() -> None:
    p = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
    counts = score_histogram(p, np.linspace(0, 1, 3))
    assert counts.tolist() == [[2, 1], [1, 2]]
    assert len(score_reference(p, bins=4)["score_histogram"]["counts"]) == 2
