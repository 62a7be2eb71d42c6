"""Shard views split a prepared cohort by pseudonym, stably, keeping every column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fusion.sharding import make_shard_views, shard_of


def _prepared(tmp_path: Path, n: int, quarantined: int) -> Path:
    root = tmp_path / "prepared"
    (root / "cache").mkdir(parents=True)
    (root / "prepared.json").write_text("{}")
    pd.DataFrame({"patient": [f"P{i:03d}" for i in range(n)], "label": [i % 2 for i in range(n)]}
                 ).to_parquet(root / "cohort.parquet", index=False)
    pd.DataFrame({"patient": [f"Q{i}" for i in range(quarantined)], "code": ["X"] * quarantined},
                 dtype="string").to_parquet(root / "quarantine.parquet", index=False)
    return root


def test_views_partition_patients_and_keep_schema(tmp_path: Path) -> None:
    root = _prepared(tmp_path, n=40, quarantined=0)  # empty quarantine: the schema must stay
    views = make_shard_views(root, 3, tmp_path / "shards")
    parts = [pd.read_parquet(v / "cohort.parquet") for v in views]
    assert sorted(p for df in parts for p in df["patient"]) == [f"P{i:03d}" for i in range(40)]
    for i, (v, df) in enumerate(zip(views, parts, strict=True)):
        assert list(df.columns) == ["patient", "label"]
        assert all(shard_of(p, 3) == i for p in df["patient"])
        assert list(pd.read_parquet(v / "quarantine.parquet").columns) == ["patient", "code"]
        assert (v / "cache").resolve() == (root / "cache").resolve()
    again = make_shard_views(root, 3, tmp_path / "shards")  # re-run: same assignment
    assert [list(pd.read_parquet(v / "cohort.parquet")["patient"]) for v in again] == \
        [list(df["patient"]) for df in parts]
