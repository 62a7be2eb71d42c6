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


# --------------------------------------------------------------- bootstrap CIs over queries
def _noisy(n: int, noise: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = _unit(rng.normal(size=(n, 16)))
    return {"a": a, "b": _unit(a + noise * rng.normal(size=(n, 16)))}


def _all(n: int) -> dict[str, np.ndarray]:
    return {"a": np.ones(n, bool), "b": np.ones(n, bool)}


RETRIEVAL_KEYS = [f"{d}{m}" for d in ("", "a_to_b/", "b_to_a/")
                  for m in ("recall@1", "recall@5", "recall@10", "median_rank")]


def test_every_recall_and_median_rank_ci_contains_its_point_estimate() -> None:
    m = retrieval_metrics(_noisy(200, 0.5), _all(200), n_boot=1000, seed=0)
    for key in RETRIEVAL_KEYS:
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"], key
        assert m[f"{key}_ci_low"] < m[f"{key}_ci_high"], key
    assert not any(k.startswith(("a/", "b/", "n_")) and "_ci_" in k for k in m)


def test_a_perfect_model_has_a_ci_of_one_and_rank_one() -> None:
    e = _unit(np.random.default_rng(0).normal(size=(50, 8)))
    m = retrieval_metrics({"a": e, "b": e}, _all(50), n_boot=200)
    for key in RETRIEVAL_KEYS:
        assert (m[f"{key}_ci_low"], m[f"{key}_ci_high"]) == (1.0, 1.0), key


def _half_right(n: int) -> dict[str, np.ndarray]:
    """b equals a on the second half of the rows and is noise on the first half: Recall@1
    stays near 0.5 whatever n (a noise partner rarely tops the gallery)."""
    rng = np.random.default_rng(n)
    a = _unit(rng.normal(size=(n, 32)))
    b = a.copy()
    b[: n // 2] = _unit(rng.normal(size=(n // 2, 32)))
    return {"a": a, "b": b}


def test_the_ci_narrows_with_more_queries() -> None:
    def width(n: int) -> float:
        m = retrieval_metrics(_half_right(n), _all(n), n_boot=500)
        assert 0.4 < m["recall@1"] < 0.6  # the same task at both sizes
        return m["recall@1_ci_high"] - m["recall@1_ci_low"]

    assert width(800) < width(50) / 2  # about 1/sqrt(16)


def test_the_ci_is_seeded_and_none_without_resamples() -> None:
    emb, pres = _noisy(120, 0.5), _all(120)
    first = retrieval_metrics(emb, pres, n_boot=300, seed=3)
    assert first == retrieval_metrics(emb, pres, n_boot=300, seed=3)
    other = retrieval_metrics(emb, pres, n_boot=300, seed=4)
    assert {k: v for k, v in first.items() if "_ci_" in k} != {
        k: v for k, v in other.items() if "_ci_" in k}
    plain = retrieval_metrics(emb, pres, n_boot=0)
    assert not any("_ci_" in k for k in plain)
    assert {k: v for k, v in first.items() if "_ci_" not in k} == plain


def test_the_direction_mean_resamples_patients_once_for_both_directions() -> None:
    # Both directions are right on the same half of the rows: a resample that draws more of
    # those rows moves both together, so the mean's CI is as wide as one direction's
    # (independent draws per direction would narrow it by about 1/sqrt(2)).
    m = retrieval_metrics(_half_right(100), _all(100), n_boot=2000)
    mean_w = m["recall@1_ci_high"] - m["recall@1_ci_low"]
    dir_w = [m[f"{d}/recall@1_ci_high"] - m[f"{d}/recall@1_ci_low"] for d in ("a_to_b", "b_to_a")]
    assert mean_w > 0.85 * np.mean(dir_w)


def test_pairs_with_missing_rows_and_no_rows_get_cis() -> None:
    emb = _noisy(60, 0.5)
    emb["c"] = emb["a"].copy()
    pres = _all(60) | {"c": np.r_[np.zeros(20, bool), np.ones(40, bool)]}
    m = retrieval_metrics(emb, pres, n_boot=200)
    assert m["a_to_c/recall@1_ci_low"] == 1.0 and m["a_to_c/median_rank_ci_high"] == 1.0
    assert m["recall@1_ci_low"] <= m["recall@1"] <= m["recall@1_ci_high"]
    pres["c"][:] = False  # a tower absent everywhere: its pairs' CIs are NaN, not an error
    m = retrieval_metrics(emb, pres, n_boot=200)
    assert np.isnan(m["a_to_c/recall@1_ci_low"]) and not np.isnan(m["recall@1_ci_low"])


def test_contrastive_task_passes_the_bootstrap_through() -> None:
    from fusion.tasks import get_task

    emb = _noisy(80, 0.5)
    prob = np.stack([emb["a"], emb["b"]], axis=1)  # (N, towers, D), towers sorted
    task = get_task("retrieval")
    m = task.evaluate(None, prob, n_boot=200, alpha=0.1, seed=1, label_names=["a", "b"])
    assert m == retrieval_metrics(emb, _all(80), n_boot=200, alpha=0.1, seed=1)
    assert "recall@1_ci_low" in m and "b_to_a/median_rank_ci_high" in m
    assert not any("_ci_" in k for k in task.evaluate(None, prob, n_boot=0, label_names=["a", "b"]))
