"""Pass 1 over a prepared cohort: who is scored, who is skipped and why, in bounded memory.

A row is keyed by (patient pseudonym, model version, input hash); the input hash covers the
row's cache keys of the model's modalities plus the model name and version, so it names
exactly what was scored. ``plan`` classifies every row of cohort.parquet in one stream of
row windows; ``pending_chunks`` streams back only the rows still to score.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

REASON_EXCLUDED = "excluded by policy"
REASON_NO_MODALITY = "no usable modality"


def input_hash(keys: dict[str, str | None], model_name: str, model_version: str) -> str:
    """Hash of the model's per-modality cache keys (None = absent) plus model name/version.

    The model name is included so two registered models that both have a version "1"
    cannot share keys in one output folder or table.
    """
    payload = json.dumps(
        {"model": model_name, "version": model_version, "keys": dict(sorted(keys.items()))},
        sort_keys=True,
    )
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


@dataclass
class Plan:
    """Who is scored, who is skipped and why (pseudonyms and counts only)."""

    eligible: int = 0
    already: int = 0
    pending_rows: list[int] = field(default_factory=list)  # row numbers in cohort.parquet
    current: set[tuple[str, str]] = field(default_factory=set)  # (patient, input_hash)
    skipped: list[dict[str, str]] = field(default_factory=list)
    presence: Counter = field(default_factory=Counter)


def _quarantine_codes(prepared: Path) -> dict[str, dict[str, list[str]]]:
    """patient -> modality -> sorted reason codes, from quarantine.parquet."""
    path = prepared / "quarantine.parquet"
    if not path.is_file():
        return {}
    q = pd.read_parquet(path, columns=["patient", "modality", "code"])
    out: dict[str, dict[str, list[str]]] = {}
    for (p, m), codes in q.groupby(["patient", "modality"])["code"]:
        out.setdefault(str(p), {})[str(m)] = sorted(set(map(str, codes)))
    return out


def _quarantine_reason(codes: dict[str, list[str]], mods: list[str] | None) -> str | None:
    """'quarantined: CODE[, CODE]' over ``mods`` (all modalities when None), else None."""
    picked = sorted({c for m, cs in codes.items() if mods is None or m in mods for c in cs})
    return "quarantined: " + ", ".join(picked) if picked else None


def _windows(path: Path, columns: list[str], rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """(first row number, DataFrame) windows of a Parquet file, ``rows`` rows at a time."""
    start = 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
        df = rb.to_pandas()
        yield start, df
        start += len(df)


def accepted(df: pd.DataFrame, m: str) -> np.ndarray:
    """Bool mask: rows whose modality ``m`` was accepted by ingest."""
    return df[f"{m}_status"].astype("string").eq("ok").fillna(False).to_numpy(dtype=bool)


def window_keys(
    df: pd.DataFrame, mods: list[str], model_name: str, model_version: str
) -> tuple[np.ndarray, list[str]]:
    """Per row: does any of ``mods`` hold a usable input, and the row's input hash."""
    ok = {m: accepted(df, m) for m in mods}
    any_ok = np.zeros(len(df), dtype=bool)
    for m in mods:
        any_ok |= ok[m]
    hashes = [
        input_hash(
            {m: (str(df[f"{m}_key"].iat[i]) if ok[m][i] else None) for m in mods},
            model_name, model_version,
        )
        for i in range(len(df))
    ]
    return any_ok, hashes


def plan(
    prepared: Path, mods: list[str], model_name: str, model_version: str,
    done: set[tuple[str, str]], window: int,
) -> Plan:
    """Classify every cohort row (eligible/pending/already scored/skipped) in one stream."""
    out = Plan()
    quarantine = _quarantine_codes(prepared)
    seen: set[str] = set()
    cols = ["patient", "excluded"] + [f"{m}_{s}" for m in mods for s in ("status", "key")]
    for start, df in _windows(prepared / "cohort.parquet", cols, window):
        any_ok, hashes = window_keys(df, mods, model_name, model_version)
        excluded = df["excluded"].astype(bool).to_numpy()
        present = {m: accepted(df, m) for m in mods}
        for i, patient in enumerate(df["patient"].astype(str)):
            seen.add(patient)
            codes = quarantine.get(patient, {})
            if excluded[i]:
                reason = _quarantine_reason(codes, None) or REASON_EXCLUDED
            elif not any_ok[i]:
                reason = _quarantine_reason(codes, mods) or REASON_NO_MODALITY
            else:
                key = (patient, hashes[i])
                if key in out.current:  # a duplicated cohort row: score it once
                    continue
                out.current.add(key)
                out.eligible += 1
                for m in mods:
                    out.presence[m] += int(present[m][i])
                if key in done:
                    out.already += 1
                else:
                    out.pending_rows.append(start + i)
                continue
            out.skipped.append({"patient": patient, "reason": reason})
    # Rows rejected as a whole (duplicate ID, bad label/split) never reach cohort.parquet.
    for patient in sorted(set(quarantine) - seen):
        out.skipped.append({"patient": patient,
                            "reason": _quarantine_reason(quarantine[patient], None) or ""})
    return out


def pending_chunks(
    prepared: Path, columns: list[str], pending: list[int], rows: int
) -> Iterator[pd.DataFrame]:
    """Stream the pending rows of cohort.parquet in chunks of exactly ``rows`` (last: fewer)."""
    wanted = np.asarray(pending, dtype=np.int64)
    buffer: list[pd.DataFrame] = []
    held = 0
    for start, df in _windows(prepared / "cohort.parquet", columns, rows):
        lo, hi = np.searchsorted(wanted, [start, start + len(df)])
        if hi > lo:
            buffer.append(df.iloc[wanted[lo:hi] - start])
            held += hi - lo
        while held >= rows:
            merged = pd.concat(buffer, ignore_index=True)
            yield merged.iloc[:rows]
            buffer, held = [merged.iloc[rows:]], len(merged) - rows
    if held:
        yield pd.concat(buffer, ignore_index=True)
