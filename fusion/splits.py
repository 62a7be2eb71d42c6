"""Patient-level train/val/test splits and a leakage check.

Splits are assigned per patient (one cohort row = one patient), so no patient's data can
sit on both sides of an evaluation. The assignment is stratified on the label with
scikit-learn, deterministic for a seed and independent of row order (patients are sorted by
pseudonym first), and it only fills the rows whose split is not given yet: a manifest's
``split`` column always wins. Rows without a label get ``None`` (they are kept out of
training and evaluation). Details in docs/metrics.md.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from modalities.errors import ClinfuseError, ConfigError, InputRejected, ReasonCode

SPLITS: tuple[str, str, str] = ("train", "val", "test")


class SplitLeakage(ClinfuseError, ValueError):
    """A patient appears in more than one split."""


def _is_missing(value: Any) -> bool:
    """None, NaN and empty strings mean 'not given'."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):  # pandas missing markers
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ConfigError(
            "split fractions must be three non-negative numbers (train, val, test) "
            f"summing to 1; got {list(fractions)}"
        )
    return f


def _label_rows(labels: Any, n: int) -> list[Any]:
    """One label per patient (a scalar, or a tuple for multilabel rows); None when missing."""
    if labels is None:
        return [0] * n  # unsupervised: everybody gets a split, one stratum
    rows = list(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} labels for {n} patients")
    out: list[Any] = []
    for row in rows:
        if isinstance(row, list | tuple | np.ndarray):
            cells = list(row)
            out.append(None if any(_is_missing(c) for c in cells) else tuple(cells))
        else:
            out.append(None if _is_missing(row) else row)
    return out


def _strata_candidates(labels: list[Any]) -> list[list[str] | None]:
    """Stratification keys to try in order; ``None`` = unstratified.

    Multilabel rows try the label combination first, then the first label alone.
    """
    if labels and isinstance(labels[0], tuple):
        return [[repr(r) for r in labels], [repr(r[0]) for r in labels], None]
    return [[repr(r) for r in labels], None]


def _two_way(
    idx: np.ndarray, key: np.ndarray | None, first: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split ``idx`` into a ``first`` fraction and the rest (stratified on ``key`` if given)."""
    from sklearn.model_selection import train_test_split

    if first >= 1.0 or idx.size == 0:
        return idx, idx[:0], None if key is None else key[:0]
    if first <= 0.0:
        return idx[:0], idx, key
    if key is None:
        a, b = train_test_split(idx, train_size=first, random_state=seed)
        return a, b, None
    a, b, _, key_b = train_test_split(idx, key, train_size=first, random_state=seed, stratify=key)
    return a, b, key_b


def _stratified(n: int, strata: list[str], fractions: np.ndarray, seed: int) -> np.ndarray | None:
    """Split index (0/1/2) per row with scikit-learn, or None when ``strata`` cannot be kept."""
    if min(Counter(strata).values()) < 2:
        return None  # a class with one member cannot be spread over splits
    out = np.zeros(n, dtype=int)
    try:
        _, rest, rest_key = _two_way(np.arange(n), np.asarray(strata), float(fractions[0]), seed)
        held = fractions[1] + fractions[2]
        if rest.size:
            val, test, _ = _two_way(rest, rest_key, float(fractions[1] / held), seed)
            out[val], out[test] = 1, 2
    except ValueError:
        return None  # sklearn: too few members of some class for the requested sizes
    return out


def _unstratified(n: int, fractions: np.ndarray, seed: int) -> np.ndarray:
    """Seeded permutation cut at the cumulative fractions (works for any n, even 1)."""
    cuts = np.round(np.cumsum(fractions)[:2] * n).astype(int)
    order = np.random.default_rng(seed).permutation(n)
    out = np.zeros(n, dtype=int)
    out[order[cuts[0] : cuts[1]]], out[order[cuts[1] :]] = 1, 2
    return out


def assign_splits(
    patients: Sequence[str],
    labels: Any = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    existing: Sequence[str | None] | None = None,
) -> list[str | None]:
    """Return one of "train"/"val"/"test" (or None) per patient, in the input order.

    ``labels``: (N,) class labels, (N, L) multilabel rows, or None (unsupervised tasks:
    nobody is excluded). A patient whose label is missing (None/NaN) gets None unless
    ``existing`` gives a split. ``existing`` (the manifest ``split`` column) is kept as is;
    only the remaining labeled patients are split, in ``fractions``, stratified on the label
    (multilabel: the label combination, else the first label). When no stratification is
    possible (e.g. a class with fewer than 2 members) it falls back to an unstratified
    split and warns.
    """
    ids = [str(p) for p in patients]
    n = len(ids)
    f = _check_fractions(fractions)
    dup = [p for p, c in Counter(ids).items() if c > 1]
    if dup:
        raise InputRejected(
            ReasonCode.DUPLICATE_PATIENT,
            f"{len(dup)} patient pseudonym(s) appear on several rows; keep one row per patient "
            "before assigning splits",
        )
    given = list(existing) if existing is not None else [None] * n
    if len(given) != n:
        raise ValueError(f"{len(given)} existing splits for {n} patients")
    result: list[str | None] = []
    for value in given:
        if _is_missing(value):
            result.append(None)
        elif str(value).strip() in SPLITS:
            result.append(str(value).strip())
        else:
            raise InputRejected(
                ReasonCode.BAD_SPLIT,
                f"split values must be one of {', '.join(SPLITS)} or empty; fix the split column",
            )
    label_rows = _label_rows(labels, n)
    todo = sorted(
        (i for i in range(n) if result[i] is None and label_rows[i] is not None),
        key=lambda i: ids[i],  # sort by pseudonym: the outcome ignores the input order
    )
    if not todo:
        return result
    todo_labels = [label_rows[i] for i in todo]
    assigned = None
    for strata in _strata_candidates(todo_labels):
        if strata is None:
            if labels is not None:
                warnings.warn(
                    "assign_splits: too few patients per class to stratify; "
                    "splitting without stratification",
                    RuntimeWarning,
                    stacklevel=2,
                )
            assigned = _unstratified(len(todo), f, seed)
            break
        assigned = _stratified(len(todo), strata, f, seed)
        if assigned is not None:
            break
    for i, s in zip(todo, assigned, strict=True):
        result[i] = SPLITS[s]
    return result


def check_no_leakage(patients: Sequence[str], splits: Sequence[str | None]) -> None:
    """Raise ``SplitLeakage`` if any patient appears in more than one split.

    Rows without a split (None) are ignored; repeated rows with the same split are fine.
    """
    if len(patients) != len(splits):
        raise ValueError(f"{len(splits)} splits for {len(patients)} patients")
    seen: dict[str, set[str]] = {}
    for patient, split in zip(patients, splits, strict=True):
        if not _is_missing(split):
            seen.setdefault(str(patient), set()).add(str(split))
    leaked = sorted(p for p, s in seen.items() if len(s) > 1)
    if leaked:
        shown = ", ".join(leaked[:5]) + (" ..." if len(leaked) > 5 else "")
        raise SplitLeakage(
            f"{len(leaked)} patient(s) appear in more than one split ({shown}); give each "
            "patient a single split"
        )
