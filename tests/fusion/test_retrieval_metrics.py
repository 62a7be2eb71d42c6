"""Retrieval ranks (fusion/metrics/retrieval.py): duplicates of the partner are answers, not
rivals; ties with a different candidate still count against the model."""

from __future__ import annotations

import numpy as np

from fusion.metrics import retrieval_metrics, retrieval_ranks
from fusion.metrics.retrieval import same_rows


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_perfect_model_ranks_every_partner_first() -> None:
    e = _unit(np.random.default_rng(0).normal(size=(20, 8)))
    assert (retrieval_ranks(e, e) == 1).all()


def test_a_gallery_duplicate_of_the_partner_counts_as_the_partner() -> None:
    # Rows 0 and 1 carry the same caption (same text embedding) for two different images.
    text = _unit(np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    image = _unit(np.array([[1.0, 0.1, 0], [1.0, 0, 0.1], [0, 1.0, 0], [0, 0, 1.0]]))
    # image -> text: both captions of rows 0/1 score the same; either is right.
    assert retrieval_ranks(image, text).tolist() == [1, 1, 1, 1]
    # text -> image: the query duplicates another query, so that query's image is right too.
    assert retrieval_ranks(text, image).tolist() == [1, 1, 1, 1]
    m = retrieval_metrics({"image": image, "text": text}, {"image": np.ones(4, bool),
                                                           "text": np.ones(4, bool)})
    assert m["recall@1"] == 1.0 and m["median_rank"] == 1.0
    assert (m["text/duplicate_share"], m["image/duplicate_share"]) == (0.5, 0.0)


def test_a_tie_with_a_different_candidate_counts_against_the_model() -> None:
    query = _unit(np.array([[1.0, 1.0], [0.0, 1.0]]))
    gallery = _unit(np.array([[1.0, 0.0], [0.0, 1.0]]))  # query 0 scores both equally
    assert retrieval_ranks(query, gallery).tolist() == [2, 1]
    # A collapsed tower makes every row a duplicate: recall says "perfect", and the
    # duplicate share (1.0) says why (module docstring).
    flat = np.ones((5, 3)) / np.sqrt(3)
    distinct = _unit(np.eye(5, 3) + 0.01 * np.arange(15).reshape(5, 3))
    m = retrieval_metrics({"a": distinct, "b": flat}, {"a": np.ones(5, bool),
                                                        "b": np.ones(5, bool)})
    assert m["recall@1"] == 1.0 and m["b/duplicate_share"] == 1.0
    assert m["a/duplicate_share"] == 0.0


def test_equal_means_equal_within_float_rounding_not_merely_close() -> None:
    a = _unit(np.random.default_rng(1).normal(size=(3, 16)))
    b = a.copy()
    b[1] += 1e-7  # batch-dependent rounding of the same caption
    b[2] = _unit(a[2:3] + 0.01)[0]  # a different caption that happens to be near
    same = same_rows(np.vstack([a, b]))
    assert same[0, 3] and same[1, 4] and not same[2, 5]


def test_ranks_reject_mismatched_shapes() -> None:
    import pytest

    with pytest.raises(ValueError, match="alike"):
        retrieval_ranks(np.ones((3, 2)), np.ones((4, 2)))
