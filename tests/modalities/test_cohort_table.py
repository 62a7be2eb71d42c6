"""CohortTable: the cohort.parquet schema the ingest writer and every reader share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from modalities.cohort_table import STATUSES, CohortTable


def _rows() -> list[dict]:
    return [
        {"patient": "p1", "y": 1.0, "split": "train", "excluded": False,
         "ct_status": "ok", "ct_key": "k1", "note_status": "missing", "note_key": None},
        {"patient": "p2", "y": None, "split": None, "excluded": False,
         "ct_status": "quarantined", "ct_key": None, "note_status": "ok", "note_key": "k2"},
        {"patient": "p3", "y": 0.0, "split": "test", "excluded": True,
         "ct_status": "missing", "ct_key": None, "note_status": "quarantined", "note_key": None},
    ]


def test_columns_and_dtypes_round_trip_through_parquet(tmp_path: Path) -> None:
    table = CohortTable.of(["note", "ct"], ["y"])
    assert table.columns == ["patient", "y", "split", "excluded", "ct_status", "ct_key",
                             "note_status", "note_key"]
    df = table.frame(_rows())
    df.to_parquet(tmp_path / "cohort.parquet", index=False)
    back = pd.read_parquet(tmp_path / "cohort.parquet")
    assert list(back.columns) == table.columns
    for col, dtype in table.dtypes.items():
        if col != "patient":
            assert str(back[col].dtype) == dtype, col
    assert np.isnan(back["y"][1]) and set(back["ct_status"]) <= set(STATUSES)


def test_ok_any_ok_and_keys() -> None:
    df = CohortTable.of(["ct", "note"], ["y"]).frame(_rows())
    assert CohortTable.ok(df, "ct").tolist() == [True, False, False]
    assert CohortTable.any_ok(df, ["ct", "note"]).tolist() == [True, True, False]
    assert CohortTable.any_ok(df, []).tolist() == [False, False, False]
    assert CohortTable.keys(df, "note") == [None, "k2", None]
    assert CohortTable.modalities_in(df) == ["ct", "note"]
    df.loc[0, "ct_status"] = pd.NA  # a missing status is never usable
    assert CohortTable.ok(df, "ct").tolist() == [False, False, False]
