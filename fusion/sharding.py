"""Split a prepared cohort into shards for fan-out (Dask workers score one shard each).

A shard is a lightweight view folder: ``prepared.json`` copied, ``cohort.parquet`` and
``quarantine.parquet`` filtered to the shard's patients, and ``cache`` a symlink to the
original cache. Patients go to shards by a stable hash of their pseudonym, so a re-run
puts every patient in the same shard (exactly-once scoring stays exact).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from modalities.cache import atomic_write


def shard_of(patient: str, shards: int) -> int:
    """Stable shard index of a pseudonym."""
    return int.from_bytes(hashlib.blake2b(patient.encode(), digest_size=8).digest(), "big") % shards


def _rows_of_shard(df: pd.DataFrame, i: int, shards: int) -> pd.DataFrame:
    """Rows of shard ``i``; a boolean array, since an empty list would select *columns*."""
    mask = np.array([shard_of(str(p), shards) == i for p in df["patient"]], dtype=bool)
    return df.loc[mask]


def make_shard_views(prepared: Path, shards: int, dest: Path) -> list[Path]:
    """Write ``shards`` view folders under ``dest``; return their paths (empty ones included)."""
    prepared, dest = Path(prepared).resolve(), Path(dest)
    cohort = pd.read_parquet(prepared / "cohort.parquet")
    quarantine_path = prepared / "quarantine.parquet"
    quarantine = pd.read_parquet(quarantine_path) if quarantine_path.exists() else None
    views = []
    for i in range(shards):
        view = dest / f"shard-{i:03d}-of-{shards:03d}"
        view.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prepared / "prepared.json", view / "prepared.json")
        part = _rows_of_shard(cohort, i, shards)
        atomic_write(view / "cohort.parquet", lambda p, d=part: d.to_parquet(p, index=False))
        if quarantine is not None:
            q = _rows_of_shard(quarantine, i, shards)
            atomic_write(view / "quarantine.parquet", lambda p, d=q: d.to_parquet(p, index=False))
        link = view / "cache"
        if not link.exists():
            os.symlink(prepared / "cache", link, target_is_directory=True)
        views.append(view)
    return views
