"""Predictions in PostgreSQL: one upsert transaction per batch into ``clinfuse_predictions``.

The table is created on first use with the key and shared columns; probability and presence
columns of a model are added when first seen (``ADD COLUMN IF NOT EXISTS``), so models with
different labels or modalities share one table. ``prediction`` is text so binary (0/1),
multiclass (class index) and multilabel (comma-joined) rows fit; a retrieval model's
``embedding_<tower>`` columns are ``REAL[]`` (NULL where the row lacks the tower).

psycopg2 directly, not SQLAlchemy Core: the store is PostgreSQL-specific by nature
(``ON CONFLICT``, ``ADD COLUMN IF NOT EXISTS``, ``information_schema``), needs one
connection per run (no pool), and ``execute_values`` upserts 3-5x faster than SQLAlchemy's
executemany at its defaults (docs/scoring.md has the numbers). Identifiers are composed with
``psycopg2.sql``, values are always parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pyarrow as pa
from psycopg2 import sql
from psycopg2.extras import execute_values

from scoring.errors import ScoringError
from scoring.stores.base import KEY_COLUMNS

TABLE = "clinfuse_predictions"
READ_ROWS = 65536  # rows per fetch when streaming a version's rows back

# PostgreSQL columns shared by every model; per-model columns get their type by prefix.
DB_BASE_COLUMNS = {
    "patient": "TEXT NOT NULL",
    "model_name": "TEXT NOT NULL",
    "model_version": "TEXT NOT NULL",
    "input_hash": "TEXT NOT NULL",
    "prediction": "TEXT",
    "threshold": "DOUBLE PRECISION",
    "scored_at": "TIMESTAMPTZ NOT NULL",
}
DB_EXTRA_TYPES = {"probability": "DOUBLE PRECISION", "present_": "BOOLEAN",
                  "embedding_": "REAL[]"}  # a retrieval model's per-tower embedding (NULL: absent)


class PostgresStore:
    """A ``PredictionStore`` over one connection; upserts arrow tables into ``TABLE``.

    ``url`` is a libpq URL; a SQLAlchemy-style ``postgresql+psycopg2://`` URL is accepted.
    Errors name the table and the SQLSTATE, never row values or the URL (it may hold a
    password).
    """

    def __init__(self, url: str, table: str = TABLE) -> None:
        self.table = table
        self.location = f"PostgreSQL table {table}"
        self.rows_upserted = 0
        # SQLAlchemy-style URLs (postgresql+psycopg2://) name the driver; libpq does not.
        url = url.replace("postgresql+psycopg2://", "postgresql://", 1)
        try:
            self.conn = psycopg2.connect(url)
        except psycopg2.Error as err:
            raise self._error("connect to the database given by db_url", err) from None
        self.columns: set[str] = set()
        self._ensure_table()

    def _error(self, what: str, err: Exception) -> ScoringError:
        # Server messages may quote row values (e.g. a key in a conflict): never pass them on.
        code = getattr(err, "pgcode", None)
        return ScoringError(
            f"PostgreSQL table {self.table}: could not {what} ({type(err).__name__}"
            + (f", SQLSTATE {code}" if code else "")
            + "); check that the server runs, db_url names an existing database and the "
            "user may create and write the table"
        )

    def _run(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(cursor)`` in one transaction; commit, or roll back and raise ScoringError."""
        try:
            with self.conn, self.conn.cursor() as cur:
                return fn(cur)
        except psycopg2.Error as err:
            raise self._error(what, err) from None

    def _ensure_table(self) -> None:
        cols = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
                for c, t in DB_BASE_COLUMNS.items()]
        pk = sql.SQL("PRIMARY KEY ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, KEY_COLUMNS)))
        stmt = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            sql.Identifier(self.table), sql.SQL(", ").join([*cols, pk]))

        def create(cur: Any) -> None:
            cur.execute(stmt)
            cur.execute("SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = %s", (self.table,))
            self.columns = {r[0] for r in cur.fetchall()}

        self._run("create the table", create)

    def _sql_type(self, column: str) -> str:
        for prefix, typ in DB_EXTRA_TYPES.items():
            if column.startswith(prefix):
                return typ
        raise ScoringError(f"PostgreSQL table {self.table}: no column type for output "
                           f"column {column!r}")

    def _add_columns(self, names: list[str]) -> None:
        missing = [c for c in names if c not in self.columns]
        if not missing:
            return

        def add(cur: Any) -> None:
            for c in missing:
                cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    sql.Identifier(self.table), sql.Identifier(c), sql.SQL(self._sql_type(c))))

        self._run("add output columns", add)
        self.columns.update(missing)

    def upsert(self, table: pa.Table) -> int:
        """Insert or update every row of ``table`` in one transaction; returns the row count."""
        names = table.column_names
        self._add_columns(names)
        data = {c: table.column(c).to_pylist() for c in names}
        if "prediction" in data:
            data["prediction"] = [None if v is None else str(v) for v in data["prediction"]]
        rows = list(zip(*(data[c] for c in names), strict=True))
        update = [c for c in names if c not in KEY_COLUMNS]
        stmt = sql.SQL("INSERT INTO {} ({}) VALUES %s ON CONFLICT ({}) DO UPDATE SET {}").format(
            sql.Identifier(self.table),
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(map(sql.Identifier, KEY_COLUMNS)),
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                               for c in update),
        )
        self._run("upsert a batch of predictions",
                  lambda cur: execute_values(cur, stmt.as_string(cur), rows, page_size=1000))
        return len(rows)

    # ----------------------------------------------------------------- PredictionStore

    def done_keys(self, model_version: str) -> set[tuple[str, str]]:
        """(patient, input_hash) of the rows stored for ``model_version``."""
        stmt = sql.SQL("SELECT patient, input_hash FROM {} WHERE model_version = %s").format(
            sql.Identifier(self.table))

        def fetch(cur: Any) -> set[tuple[str, str]]:
            cur.execute(stmt, (model_version,))
            return {(p, h) for p, h in cur.fetchall()}

        return self._run("read the keys already stored", fetch)

    def write(self, table: pa.Table) -> int:
        n = self.upsert(table)
        self.rows_upserted += n
        return n

    def finish(self) -> None:
        """Nothing to do: every batch was committed in its own transaction."""

    def rows(self, model_version: str, columns: list[str]) -> Iterator[pa.Table]:
        """Stream ``columns`` of ``model_version``'s rows through a server-side cursor."""
        if any(c not in self.columns for c in columns):
            return  # the model's output columns were never added: it has no rows here
        stmt = sql.SQL("SELECT {} FROM {} WHERE model_version = %s").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(self.table))
        try:
            with self.conn, self.conn.cursor(name="clinfuse_rows") as cur:
                cur.itersize = READ_ROWS
                cur.execute(stmt, (model_version,))
                while batch := cur.fetchmany(READ_ROWS):
                    yield pa.table({c: [r[i] for r in batch] for i, c in enumerate(columns)})
        except psycopg2.Error as err:
            raise self._error("read stored predictions", err) from None

    def counts(self) -> dict[str, int]:
        return {"db_rows_upserted": self.rows_upserted}

    def close(self) -> None:
        self.conn.close()
