"""Patient-level splits: fractions, stratification, determinism, existing splits, leakage."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from fusion.splits import SplitLeakage, assign_splits, check_no_leakage
from modalities.errors import ConfigError, InputRejected, ReasonCode


def _cohort(n: int = 1000, prevalence: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"pt-{rng.integers(1 << 40):012x}" for _ in range(n)]
    return ids, (rng.random(n) < prevalence).astype(int)


def test_fractions_and_stratification() -> None:
    ids, y = _cohort()
    splits = assign_splits(ids, y, fractions=(0.7, 0.15, 0.15), seed=0)
    counts = Counter(splits)
    assert counts == {"train": 700, "val": 150, "test": 150}
    for name in ("train", "val", "test"):
        prevalence = y[[s == name for s in splits]].mean()
        assert prevalence == pytest.approx(y.mean(), abs=0.01), name


def test_deterministic_and_order_independent() -> None:
    ids, y = _cohort(300)
    first = assign_splits(ids, y, seed=5)
    assert assign_splits(ids, y, seed=5) == first
    perm = np.random.default_rng(1).permutation(300)
    shuffled = assign_splits([ids[i] for i in perm], y[perm], seed=5)
    assert dict(zip([ids[i] for i in perm], shuffled, strict=True)) == dict(
        zip(ids, first, strict=True)
    )
    assert assign_splits(ids, y, seed=6) != first


def test_existing_splits_respected_and_unlabeled_excluded() -> None:
    ids, y = _cohort(200)
    labels: list = list(y)
    labels[0] = None  # unlabeled, no split given -> None
    labels[1] = float("nan")  # unlabeled with a given split -> kept
    existing: list = [None] * 200
    existing[1] = "test"
    existing[2:12] = ["val"] * 10
    splits = assign_splits(ids, labels, existing=existing)
    assert splits[0] is None and splits[1] == "test"
    assert splits[2:12] == ["val"] * 10
    assert all(s in ("train", "val", "test") for s in splits[12:])
    # only the missing ones are split, in the requested fractions
    assert Counter(splits[12:])["train"] == pytest.approx(0.7 * 188, abs=1)


def test_bad_inputs_are_typed() -> None:
    with pytest.raises(InputRejected) as bad:
        assign_splits(["a", "b"], [0, 1], existing=["train", "holdout"])
    assert bad.value.code is ReasonCode.BAD_SPLIT and "holdout" not in str(bad.value)
    with pytest.raises(InputRejected) as dup:
        assign_splits(["a", "a"], [0, 1])
    assert dup.value.code is ReasonCode.DUPLICATE_PATIENT
    with pytest.raises(ConfigError, match="fractions"):
        assign_splits(["a", "b"], [0, 1], fractions=(0.8, 0.3, 0.1))


def test_tiny_classes_fall_back_unstratified_with_warning() -> None:
    ids = [f"p{i}" for i in range(20)]
    labels = [0] * 19 + [1]  # one positive: cannot stratify
    with pytest.warns(RuntimeWarning, match="stratif"):
        splits = assign_splits(ids, labels)
    assert all(s in ("train", "val", "test") for s in splits)
    with pytest.warns(RuntimeWarning):
        assert assign_splits(["only"], [1]) == ["train"]


def test_unlabeled_task_and_zero_fractions() -> None:
    ids, _ = _cohort(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = assign_splits(ids, None, fractions=(0.8, 0.2, 0.0))
    assert Counter(splits) == {"train": 80, "val": 20}


def test_multilabel_stratifies() -> None:
    rng = np.random.default_rng(2)
    ids = [f"p{i:04d}" for i in range(600)]
    y = (rng.random((600, 2)) < [0.3, 0.5]).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # label combinations are common enough: no fallback
        splits = np.array(assign_splits(ids, y))
    for name in ("train", "val", "test"):
        assert y[splits == name].mean(0) == pytest.approx(y.mean(0), abs=0.03)


def test_no_leakage() -> None:
    ids, y = _cohort(100)
    splits = assign_splits(ids, y)
    check_no_leakage(ids, splits)
    check_no_leakage(ids + ids[:3], splits + splits[:3])  # repeated rows, same split: fine
    moved = {"train": "test", "val": "train", "test": "val"}
    with pytest.raises(SplitLeakage, match="1 patient"):
        check_no_leakage([*ids, ids[0]], [*splits, moved[splits[0]]])
