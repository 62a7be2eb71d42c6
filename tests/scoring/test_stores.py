"""Prediction stores: the same scoring through Parquet and PostgreSQL via the protocol,
exactly-once resume in each, the mirror catching up, and consolidation."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.predictor import Predictor
from scoring import score_cohort, score_into
from scoring.stores import (
    MirroredStore,
    ParquetStore,
    PostgresStore,
    PredictionStore,
    consolidate,
    open_store,
)
from scoring.stores.postgres import TABLE
from tests.scoring.helpers import assert_db_equals_parquet, db_rows, eligible_rows


class Interrupted(Exception):
    """Stands for a crash after some batches were written."""


@pytest.fixture(params=["parquet", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], PredictionStore]:
    """Opens a fresh handle on one backing store (a folder, or the module's database)."""
    if request.param == "parquet":
        return lambda: ParquetStore(tmp_path / "store")
    url = request.getfixturevalue("pg_url")
    return lambda: PostgresStore(url)


def test_stores_implement_the_protocol(tmp_path: Path, pg_url: str) -> None:
    stores = [ParquetStore(tmp_path), PostgresStore(pg_url), open_store(tmp_path, pg_url)]
    try:
        for store in stores:
            assert isinstance(store, PredictionStore), type(store).__name__
        assert isinstance(stores[2], MirroredStore)
        assert isinstance(open_store(tmp_path), ParquetStore)
    finally:
        for store in stores:
            store.close()


def test_same_predictions_and_exactly_once_resume_in_each_store(
    opener: Callable[[], PredictionStore], cohort: dict, predictor: Predictor, tmp_path: Path
) -> None:
    prepared = cohort["prepared"]
    want = eligible_rows(prepared)
    reference = score_cohort(prepared, predictor, tmp_path / "reference", "proto", "1",
                             batch_size=4)
    ref = pd.read_parquet(tmp_path / "reference" / "predictions.parquet")

    def crash_after_two_batches(done: int, total: int) -> None:
        if done >= 8:
            raise Interrupted

    store = opener()
    try:
        with pytest.raises(Interrupted):
            score_into(store, prepared, predictor, "proto", "1", batch_size=4,
                       progress=crash_after_two_batches)
    finally:
        store.close()

    store = opener()  # a new process would reopen the store the same way
    try:
        assert len(store.done_keys("1")) == 8
        s = score_into(store, prepared, predictor, "proto", "1", batch_size=4)
        got = pd.concat([t.to_pandas() for t in store.rows(
            "1", ["patient", "input_hash", "probability", "prediction"])], ignore_index=True)
        again = score_into(store, prepared, predictor, "proto", "1", batch_size=4)
    finally:
        store.close()
    assert s.already_scored == 8 and s.scored_now == s.eligible - 8 == len(want) - 8
    assert again.scored_now == 0 and again.already_scored == len(want)
    # Every eligible patient exactly once, with the uninterrupted run's predictions.
    assert len(got) == len(want) and not got.duplicated(["patient", "input_hash"]).any()
    merged = ref.merge(got, on=["patient", "input_hash"], suffixes=("", "_store"),
                       validate="one_to_one")
    assert len(merged) == len(want)
    np.testing.assert_allclose(merged["probability_store"], merged["probability"], rtol=0,
                               atol=1e-6)
    assert (merged["prediction_store"].astype(str) == merged["prediction"].astype(str)).all()
    assert s.distribution["n"] == reference.distribution["n"] == len(want)
    assert s.distribution["probability"]["mean"] == pytest.approx(
        reference.distribution["probability"]["mean"], abs=1e-6)


def test_resume_syncs_parts_missing_from_postgres(
    cohort: dict, predictor: Predictor, tmp_path: Path, pg_url: str
) -> None:
    import psycopg2

    first = score_cohort(cohort["prepared"], predictor, tmp_path, "sync", "1", batch_size=4,
                         db_url=pg_url)
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {TABLE} WHERE model_name = 'sync' AND patient IN "
                    f"(SELECT patient FROM {TABLE} WHERE model_name = 'sync' LIMIT 3)")
    conn.close()
    assert len(db_rows(pg_url, "sync")) == first.eligible - 3
    again = score_cohort(cohort["prepared"], predictor, tmp_path, "sync", "1", batch_size=4,
                         db_url=pg_url)
    assert again.scored_now == 0 and 1 <= again.db_parts_synced <= 3
    assert again.db_rows_upserted == 0  # healing is counted as parts synced, not rows scored
    assert_db_equals_parquet(pg_url, tmp_path, "sync")


def test_consolidation_drops_duplicate_rows(
    cohort: dict, predictor: Predictor, tmp_path: Path
) -> None:
    s = score_cohort(cohort["prepared"], predictor, tmp_path, "dedup", "1", batch_size=4)
    parts = sorted((tmp_path / "parts").glob("part-*.parquet"))
    shutil.copy(parts[0], tmp_path / "parts" / "part-zzzz-copy.parquet")  # e.g. a stray copy
    assert consolidate(tmp_path) is True
    df = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(df) == s.eligible and df["patient"].is_unique
    assert consolidate(tmp_path) is False  # up to date: left alone
