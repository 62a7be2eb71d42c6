"""Where batch scoring puts predictions: the ``PredictionStore`` protocol and its stores.

A store holds rows keyed by (patient pseudonym, model version, input hash) (``KEY_COLUMNS``).
The scoring loop needs four things of it: which keys of a model version are already stored
(to resume without scoring a row twice), writing one scored batch all-or-nothing,
finishing (consolidation), and reading a version's rows back for the score distribution.

- ``ParquetStore`` (``stores.parquet``): one atomic part file per batch, consolidated into
  ``predictions.parquet``;
- ``PostgresStore`` (``stores.postgres``): one upsert transaction per batch;
- ``MirroredStore``: Parquet parts as the record, every batch mirrored to PostgreSQL right
  after its part; the mirror catches up with parts it lacks before scoring starts.

``open_store(out, db_url)`` builds what ``score_cohort`` uses: Parquet, mirrored when a
database URL is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from scoring.stores.base import KEY_COLUMNS, PredictionStore
from scoring.stores.parquet import ParquetStore, consolidate
from scoring.stores.postgres import PostgresStore


class MirroredStore:
    """Parquet parts are the record; every batch is mirrored to a second store after its part.

    Before scoring, the mirror catches up: each part with a row the mirror lacks is written
    to it again (idempotent), so a crash between a part and its mirror write, or an emptied
    table, heals on the next run. Done keys, rows and location are the primary's.
    """

    def __init__(self, primary: ParquetStore, mirror: PredictionStore) -> None:
        self.primary = primary
        self.mirror = mirror
        self.location = primary.location
        self.parts_synced = 0
        self.mirrored_rows = 0

    def sync(self) -> int:
        """Write every part with a row missing from the mirror to it; returns parts synced."""
        keyed = self.primary.part_keys()
        versions = sorted({v for _, t in keyed for v in t.column("model_version").to_pylist()})
        stored = {v: self.mirror.done_keys(v) for v in versions}
        synced = 0
        for part, t in keyed:
            keys = zip(*(t.column(c).to_pylist() for c in KEY_COLUMNS), strict=True)
            if any((p, h) not in stored[v] for p, v, h in keys):
                self.mirror.write(self.primary.read_part(part))
                synced += 1
        self.parts_synced += synced
        return synced

    def done_keys(self, model_version: str) -> set[tuple[str, str]]:
        self.sync()
        return self.primary.done_keys(model_version)

    def write(self, table: pa.Table) -> int:
        n = self.primary.write(table)
        self.mirrored_rows += self.mirror.write(table)  # after the part: healed by sync()
        return n

    def finish(self) -> None:
        self.primary.finish()
        self.mirror.finish()

    def rows(self, model_version: str, columns: list[str]) -> Iterator[pa.Table]:
        return self.primary.rows(model_version, columns)

    def counts(self) -> dict[str, int]:
        return self.primary.counts() | {"db_rows_upserted": self.mirrored_rows,
                                        "db_parts_synced": self.parts_synced}

    def close(self) -> None:
        try:
            self.mirror.close()
        finally:
            self.primary.close()


def open_store(out: Path, db_url: str | None = None) -> PredictionStore:
    """Parquet parts under ``out``, mirrored to PostgreSQL when ``db_url`` is given.

    Connects (and creates the table) now, so a bad URL fails before anything is written.
    """
    store = ParquetStore(out)
    if not db_url:
        return store
    return MirroredStore(store, PostgresStore(db_url))


__all__ = ["KEY_COLUMNS", "MirroredStore", "ParquetStore", "PostgresStore", "PredictionStore",
           "consolidate", "open_store"]
