"""Batch scoring of a prepared cohort: exactly-once, resumable predictions to Parquet and SQL.

``score_cohort`` streams a prepared cohort from the tensor cache through a ``Predictor`` in
batches and writes each finished batch as an atomic Parquet part file
(``OUT/parts/part-<batchhash>.parquet``), then upserts it into PostgreSQL when a database
URL is given. A row is keyed by (patient pseudonym, model version, input hash); the input
hash covers the row's cache keys of the model's modalities plus the model name and version,
so it names exactly what was scored. On start the keys already present in the parts are
skipped, so a re-run or a resume after SIGKILL scores only what is missing and never writes
a row twice. The run ends by consolidating all parts into ``OUT/predictions.parquet``
(deduplicated, atomic) and summarising counts, the score distribution and input drift.

Memory stays bounded whatever the cohort size: cohort.parquet is read in row windows, the
DataLoader holds a few batches, predictions go to disk batch by batch, and the score
distribution is accumulated as fixed-size histograms. What grows with the cohort is a set
of short key strings (to skip and deduplicate rows), not inputs or predictions.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from fusion.data import CohortDataset, Collator
from fusion.predictor import Predictor
from fusion.train import autocast, probabilities
from modalities.cache import TensorCache, atomic_write
from modalities.errors import ClinfuseError, ConfigError

TABLE = "clinfuse_predictions"
KEY_COLUMNS = ("patient", "model_version", "input_hash")
PARTS_META = b"clinfuse.parts"  # Parquet schema metadata: digest of the consolidated parts
HIST_BINS = 1000  # resolution of the streamed quantiles (1e-3 on [0, 1])
PSI_EPS = 1e-4  # floor for empty bins in the PSI so log() stays finite

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
DB_EXTRA_TYPES = {"probability": "DOUBLE PRECISION", "present_": "BOOLEAN"}

REASON_EXCLUDED = "excluded by policy"
REASON_NO_MODALITY = "no usable modality"


class ScoringError(ClinfuseError):
    """Scoring could not write its output (database or files); names the target, no rows."""


@dataclass
class ScoreSummary:
    """What one scoring run did. Holds pseudonyms and counts only (safe for logs/results).

    ``skipped`` lists ``{"patient", "reason"}`` for every patient in the prepared cohort
    (or its quarantine) that the model cannot score. ``distribution`` and ``drift`` cover
    every current prediction of this model version, whether scored now or earlier.
    ``peak_rss_mb`` is the process's peak resident set (getrusage), not this run's alone
    (in a freshly exec'd child it may even include the parent's RSS at fork time).
    """

    model_name: str
    model_version: str
    eligible: int
    scored_now: int
    already_scored: int
    skipped: list[dict[str, str]]
    skipped_by_reason: dict[str, int]
    distribution: dict[str, Any]
    drift: dict[str, Any]
    seconds: float
    peak_rss_mb: float
    predictions_path: str
    parts_written: int = 0
    db_rows_upserted: int = 0
    db_parts_synced: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- keys


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


def _batch_hash(keys: list[tuple[str, str]], model_version: str) -> str:
    """Part file name: a digest of the batch's row keys (same rows -> same file)."""
    h = hashlib.blake2b(model_version.encode(), digest_size=12)
    for patient, ihash in sorted(keys):
        h.update(f"{patient}\0{ihash}\n".encode())
    return h.hexdigest()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- output schema


def output_columns(predictor: Predictor) -> tuple[list[str], list[str]]:
    """(probability column names, label names) for the predictor's task."""
    if predictor.task == "binary":
        return ["probability"], ["probability"]
    n = len(np.atleast_1d(predictor.prior))
    names = [str(x) for x in (predictor.config.get("label_names") or range(n))]
    return [f"probability_{x}" for x in names], names


def _predictions(predictor: Predictor, probs: np.ndarray, names: list[str]) -> pa.Array:
    """Decisions from probabilities: 0/1 (binary), class index, or comma-joined labels."""
    thr = predictor.threshold
    if predictor.task == "binary":
        return pa.array((probs[:, 0] >= thr).astype(np.int64))
    if predictor.task == "multiclass":
        return pa.array(probs.argmax(1).astype(np.int64))
    return pa.array(
        [",".join(n for n, p in zip(names, row, strict=True) if p >= thr) for row in probs],
        pa.string(),
    )


# --------------------------------------------------------------------------- cohort reading


@dataclass
class _Plan:
    """Pass 1 over cohort.parquet: who is scored, who is skipped and why."""

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


def _ok(df: pd.DataFrame, m: str) -> np.ndarray:
    """Bool mask: rows whose modality ``m`` was accepted by ingest."""
    return df[f"{m}_status"].astype("string").eq("ok").fillna(False).to_numpy(dtype=bool)


def _window_keys(
    df: pd.DataFrame, mods: list[str], model_name: str, model_version: str
) -> tuple[np.ndarray, list[str]]:
    """Per row: does any of ``mods`` hold a usable input, and the row's input hash."""
    ok = {m: _ok(df, m) for m in mods}
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


def _plan(
    prepared: Path, mods: list[str], model_name: str, model_version: str,
    done: set[tuple[str, str]], window: int,
) -> _Plan:
    """Classify every cohort row (eligible/pending/already scored/skipped) in one stream."""
    plan = _Plan()
    quarantine = _quarantine_codes(prepared)
    seen: set[str] = set()
    cols = ["patient", "excluded"] + [f"{m}_{s}" for m in mods for s in ("status", "key")]
    for start, df in _windows(prepared / "cohort.parquet", cols, window):
        any_ok, hashes = _window_keys(df, mods, model_name, model_version)
        excluded = df["excluded"].astype(bool).to_numpy()
        present = {m: _ok(df, m) for m in mods}
        for i, patient in enumerate(df["patient"].astype(str)):
            seen.add(patient)
            codes = quarantine.get(patient, {})
            if excluded[i]:
                reason = _quarantine_reason(codes, None) or REASON_EXCLUDED
            elif not any_ok[i]:
                reason = _quarantine_reason(codes, mods) or REASON_NO_MODALITY
            else:
                key = (patient, hashes[i])
                if key in plan.current:  # a duplicated cohort row: score it once
                    continue
                plan.current.add(key)
                plan.eligible += 1
                for m in mods:
                    plan.presence[m] += int(present[m][i])
                if key in done:
                    plan.already += 1
                else:
                    plan.pending_rows.append(start + i)
                continue
            plan.skipped.append({"patient": patient, "reason": reason})
    # Rows rejected as a whole (duplicate ID, bad label/split) never reach cohort.parquet.
    for patient in sorted(set(quarantine) - seen):
        plan.skipped.append({"patient": patient,
                             "reason": _quarantine_reason(quarantine[patient], None) or ""})
    return plan


def _pending_chunks(
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


# --------------------------------------------------------------------------- parts


def _part_files(out: Path) -> list[Path]:
    """Finished part files, sorted (temporary files of interrupted writes start with '.')."""
    return sorted((out / "parts").glob("part-*.parquet"))


def _read_keys(part: Path) -> pa.Table:
    try:
        return pq.read_table(part, columns=list(KEY_COLUMNS))
    except (OSError, pa.ArrowException) as err:
        raise ScoringError(
            f"prediction part {part} cannot be read ({type(err).__name__}); delete it and "
            "re-run to score its rows again"
        ) from None


def _done_keys(parts: list[Path], model_version: str) -> set[tuple[str, str]]:
    """(patient, input_hash) of every row of ``model_version`` already in the parts."""
    done: set[tuple[str, str]] = set()
    for part in parts:
        t = _read_keys(part)
        mask = np.asarray(t.column("model_version").to_pylist(), dtype=object) == model_version
        pats = np.asarray(t.column("patient").to_pylist(), dtype=object)[mask]
        hashes = np.asarray(t.column("input_hash").to_pylist(), dtype=object)[mask]
        done.update(zip(pats, hashes, strict=True))
    return done


def _parts_digest(parts: list[Path]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.name.encode() + b"\n")
    return h.hexdigest().encode()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Give ``table`` exactly ``schema``'s columns (absent ones null) in its order."""
    cols = [
        table.column(f.name).cast(f.type) if f.name in table.column_names
        else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def consolidate(out: Path) -> bool:
    """Merge all parts into ``OUT/predictions.parquet``, deduplicated by key, atomically.

    Streams part by part (bounded memory). Parts of models with other outputs are merged
    into one schema (missing columns null). Returns False when the file was already up to
    date with the parts (it is then left untouched, byte for byte).
    """
    out = Path(out)
    parts = _part_files(out)
    target = out / "predictions.parquet"
    digest = _parts_digest(parts)
    if target.is_file():
        meta = pq.read_schema(target).metadata or {}
        if meta.get(PARTS_META) == digest:
            return False
    if not parts:
        return False
    try:
        schema = pa.unify_schemas([pq.read_schema(p).remove_metadata() for p in parts])
    except pa.ArrowException as err:
        raise ScoringError(f"prediction parts in {out / 'parts'} have incompatible "
                           f"columns ({type(err).__name__}); write models with different "
                           "outputs to different folders") from None
    schema = schema.with_metadata({PARTS_META: digest})
    seen: set[tuple[str, str, str]] = set()

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                t = pq.read_table(part)
                keys = zip(*(t.column(c).to_pylist() for c in KEY_COLUMNS), strict=True)
                keep = []
                for k in keys:
                    keep.append(k not in seen)
                    seen.add(k)
                if any(keep):
                    writer.write_table(_conform(t.filter(pa.array(keep)), schema))

    atomic_write(target, write)
    return True


# --------------------------------------------------------------------------- PostgreSQL


class _Database:
    """One connection to PostgreSQL; upserts arrow tables into ``TABLE``.

    The table is created on first use with the key and shared columns; probability and
    presence columns of a model are added when first seen (``ADD COLUMN IF NOT EXISTS``),
    so models with different labels or modalities share one table. ``prediction`` is text
    so binary (0/1), multiclass (class index) and multilabel (comma-joined) rows fit.
    """

    def __init__(self, url: str, table: str = TABLE) -> None:
        import psycopg2

        self.table = table
        self._pg = psycopg2
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
        except self._pg.Error as err:
            raise self._error(what, err) from None

    def _ensure_table(self) -> None:
        from psycopg2 import sql

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
        from psycopg2 import sql

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
        from psycopg2 import sql
        from psycopg2.extras import execute_values

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

    def keys(self, versions: list[str]) -> set[tuple[str, str, str]]:
        """Keys already in the table for ``versions``."""
        from psycopg2 import sql

        stmt = sql.SQL("SELECT patient, model_version, input_hash FROM {} "
                       "WHERE model_version = ANY(%s)").format(sql.Identifier(self.table))

        def fetch(cur: Any) -> set[tuple[str, str, str]]:
            cur.execute(stmt, (versions,))
            return {tuple(r) for r in cur.fetchall()}

        return self._run("read the keys already stored", fetch)

    def sync_parts(self, parts: list[Path]) -> int:
        """Upsert every part that has a row missing from the table (resume after a crash)."""
        if not parts:
            return 0
        key_tables = [_read_keys(p) for p in parts]
        versions = sorted({v for t in key_tables for v in t.column("model_version").to_pylist()})
        stored = self.keys(versions)
        synced = 0
        for part, t in zip(parts, key_tables, strict=True):
            keys = zip(*(t.column(c).to_pylist() for c in KEY_COLUMNS), strict=True)
            if any(k not in stored for k in keys):
                self.upsert(pq.read_table(part))
                synced += 1
        return synced

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- statistics


def score_reference(
    probabilities: np.ndarray, presence: dict[str, float] | None = None,
    prior: float | list[float] | None = None, bins: int = 10,
) -> dict[str, Any]:
    """A drift reference from training-time predictions (e.g. the test split's).

    ``probabilities``: (N,) or (N, K); the histogram uses ``bins`` equal bins on [0, 1].
    """
    p = np.asarray(probabilities, dtype=float).reshape(len(probabilities), -1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = [np.histogram(p[:, k], edges)[0].tolist() for k in range(p.shape[1])]
    ref: dict[str, Any] = {"score_histogram": {"edges": edges.tolist(), "counts": counts}}
    if presence is not None:
        ref["presence"] = dict(presence)
    if prior is not None:
        ref["prior"] = prior
    return ref


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index of two histograms over the same bins (counts or shares).

    sum((a - e) * ln(a / e)) over bins, with empty bins floored at ``eps``. Rules of thumb:
    < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.sum() <= 0 or a.sum() <= 0:
        return math.nan
    e = np.clip(e / e.sum(), eps, None)
    a = np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


class _ScoreStats:
    """Streamed distribution of probability columns: mean, histogram quantiles, rates."""

    def __init__(self, columns: list[str], ref_edges: np.ndarray | None) -> None:
        self.columns = columns
        self.n = 0
        self.sums = np.zeros(len(columns))
        self.positive = np.zeros(len(columns))
        self.fine = np.zeros((len(columns), HIST_BINS), dtype=np.int64)
        self.ref_edges = ref_edges
        self.ref = (np.zeros((len(columns), len(ref_edges) - 1), dtype=np.int64)
                    if ref_edges is not None else None)

    def add(self, probs: np.ndarray, positive: np.ndarray) -> None:
        self.n += len(probs)
        self.sums += probs.sum(0)
        self.positive += positive.sum(0)
        for k in range(probs.shape[1]):
            idx = np.clip((probs[:, k] * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
            self.fine[k] += np.bincount(idx, minlength=HIST_BINS)
            if self.ref is not None:
                self.ref[k] += np.histogram(np.clip(probs[:, k], 0, 1), self.ref_edges)[0]

    def _quantile(self, k: int, q: float) -> float:
        cum = np.cumsum(self.fine[k])
        i = int(np.searchsorted(cum, q * cum[-1], side="left"))
        return (min(i, HIST_BINS - 1) + 0.5) / HIST_BINS  # bin centre: error <= 0.5e-3

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        for k, c in enumerate(self.columns):
            if self.n == 0:
                out[c] = {}
                continue
            out[c] = {
                "mean": float(self.sums[k] / self.n),
                "quantiles": {str(q): self._quantile(k, q)
                              for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                "positive_rate": float(self.positive[k] / self.n),
            }
        return out


def _positive(task: str, probs: np.ndarray, threshold: float) -> np.ndarray:
    """Per row and column: 1 where the model decides positive (multiclass: argmax class)."""
    if task == "multiclass":
        return np.eye(probs.shape[1])[probs.argmax(1)] if len(probs) else probs
    return (probs >= threshold).astype(float)


def _distribution(
    out: Path, predictor: Predictor, model_version: str, current: set[tuple[str, str]],
    prob_cols: list[str], ref_edges: np.ndarray | None,
) -> _ScoreStats:
    """One streamed pass over predictions.parquet: this version's current rows only."""
    stats = _ScoreStats(prob_cols, ref_edges)
    path = out / "predictions.parquet"
    if not path.is_file():
        return stats
    cols = ["patient", "model_version", "input_hash", *prob_cols]
    for rb in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=cols):
        d = rb.to_pydict()
        keep = np.array([v == model_version and (p, h) in current for p, v, h in
                         zip(d["patient"], d["model_version"], d["input_hash"], strict=True)],
                        dtype=bool)
        if not keep.any():
            continue
        probs = np.stack([np.asarray(d[c], dtype=float) for c in prob_cols], 1)[keep]
        stats.add(probs, _positive(predictor.task, probs, predictor.threshold))
    return stats


def _drift(
    predictor: Predictor, plan: _Plan, stats: _ScoreStats, reference: dict[str, Any] | None,
) -> dict[str, Any]:
    """Presence-rate differences, prior vs mean score, and PSI vs a reference histogram."""
    ref = dict(reference or {})
    n = max(plan.eligible, 1)
    out: dict[str, Any] = {"presence": {}}
    for m in predictor.modalities:
        cur = plan.presence[m] / n if plan.eligible else math.nan
        entry = {"current": cur}
        if m in ref.get("presence", {}):
            entry |= {"reference": float(ref["presence"][m]),
                      "difference": cur - float(ref["presence"][m])}
        out["presence"][m] = entry
    prior = np.atleast_1d(np.asarray(ref.get("prior", predictor.prior), dtype=float))
    means = [stats.sums[k] / stats.n if stats.n else math.nan for k in range(len(stats.columns))]
    out["prior"] = {
        c: {"reference": float(prior[k]) if k < len(prior) else math.nan, "mean_score": means[k],
            "difference": means[k] - float(prior[k]) if k < len(prior) else math.nan}
        for k, c in enumerate(stats.columns)
    }
    if stats.ref is not None:
        counts = np.atleast_2d(np.asarray(ref["score_histogram"]["counts"], dtype=float))
        out["psi"] = {c: psi(counts[k], stats.ref[k]) if k < len(counts) else math.nan
                      for k, c in enumerate(stats.columns)}
    return out


# --------------------------------------------------------------------------- scoring


def _check_inputs(prepared: Path, predictor: Predictor, model_version: str,
                  batch_size: int) -> None:
    """Fail fast with typed errors before touching any output."""
    meta_path = prepared / "prepared.json"
    if not meta_path.is_file():
        raise ConfigError(f"{prepared} is not a prepared cohort (no prepared.json); "
                          "run `clinfuse ingest` first")
    if not model_version:
        raise ConfigError("model_version is empty; pass the registered model's version")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    meta = json.loads(meta_path.read_text())
    columns = set(pq.read_schema(prepared / "cohort.parquet").names)
    for m in predictor.modalities:
        if f"{m}_key" not in columns:
            raise ConfigError(f"the model uses modality {m!r} but {prepared} was prepared "
                              f"without it; ingest with a config that includes {m!r}")
        want = meta.get("spec_hashes", {}).get(m)
        if want is not None and want != predictor.mods[m].spec_hash():
            raise ConfigError(
                f"modality {m!r}: the model's preprocessing spec differs from the one "
                f"{prepared} was prepared with; re-run ingest with the model's cohort config"
            )


def _batch_table(
    predictor: Predictor, chunk: pd.DataFrame, probs: np.ndarray, model_name: str,
    model_version: str, hashes: list[str], prob_cols: list[str], names: list[str],
) -> pa.Table:
    n = len(chunk)
    cols: dict[str, pa.Array] = {
        "patient": pa.array(chunk["patient"].astype(str).tolist(), pa.string()),
        "model_name": pa.array([model_name] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "input_hash": pa.array(hashes, pa.string()),
    }
    for k, c in enumerate(prob_cols):
        cols[c] = pa.array(probs[:, k].astype(np.float64))
    cols["prediction"] = _predictions(predictor, probs, names)
    cols["threshold"] = pa.array([predictor.threshold] * n, pa.float64())
    for m in predictor.modalities:
        cols[f"present_{m}"] = pa.array(_ok(chunk, m))
    now = datetime.now(UTC)
    cols["scored_at"] = pa.array([now] * n, pa.timestamp("us", tz="UTC"))
    return pa.table(cols)


def score_cohort(
    prepared: Path,
    predictor: Predictor,
    out: Path,
    model_name: str,
    model_version: str,
    batch_size: int = 64,
    db_url: str | None = None,
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    reference: dict[str, Any] | None = None,
) -> ScoreSummary:
    """Score every eligible patient of a prepared cohort once; resumable and idempotent.

    ``progress(done, total)`` is called after each written batch (``total``: rows pending
    at start). ``reference`` (see ``score_reference``) adds presence/prior differences and
    the PSI of the scores; without it the prior comes from the predictor's config.
    Raises ``ConfigError`` for a wrong folder or spec and ``ScoringError`` when an output
    (part file, PostgreSQL) cannot be written.
    """
    t0 = time.perf_counter()
    prepared, out = Path(prepared), Path(out)
    _check_inputs(prepared, predictor, model_version, batch_size)
    mods = list(predictor.modalities)
    prob_cols, names = output_columns(predictor)
    window = batch_size * 16  # cohort rows read per step: bounded, independent of N

    db = _Database(db_url) if db_url else None
    try:
        parts = _part_files(out)
        synced = db.sync_parts(parts) if db else 0
        plan = _plan(prepared, mods, model_name, model_version,
                     _done_keys(parts, model_version), window)

        predictor.to_device()
        device = predictor.device
        cache = TensorCache(prepared / "cache")
        collate = Collator(predictor.mods, predictor.task)
        columns = ["patient"] + [f"{m}_{s}" for m in mods for s in ("status", "key")]
        total, done, written, upserted = len(plan.pending_rows), 0, 0, 0
        for chunk in _pending_chunks(prepared, columns, plan.pending_rows, window):
            _, hashes = _window_keys(chunk, mods, model_name, model_version)
            dataset = CohortDataset(chunk, cache, predictor.mods, predictor.cohort.labels)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                collate_fn=collate, num_workers=num_workers,
                                pin_memory=device.type == "cuda")
            for b, batch in enumerate(loader):
                lo, hi = b * batch_size, b * batch_size + len(batch.patients)
                with torch.inference_mode(), autocast(device, True):
                    batch = batch.to(device)
                    logits = predictor.model(batch.inputs, batch.present)["logits"]
                    probs = probabilities(predictor.task, logits).float().cpu().numpy()
                probs = probs.reshape(hi - lo, len(prob_cols))
                rows = chunk.iloc[lo:hi]
                table = _batch_table(predictor, rows, probs, model_name, model_version,
                                     hashes[lo:hi], prob_cols, names)
                name = _batch_hash(list(zip(rows["patient"].astype(str), hashes[lo:hi],
                                            strict=True)), model_version)
                part = out / "parts" / f"part-{name}.parquet"
                try:
                    atomic_write(part, lambda p, t=table: pq.write_table(t, p))
                except OSError as err:
                    raise ScoringError(f"could not write prediction part {part} "
                                       f"({type(err).__name__}); check disk space and "
                                       "permissions, then re-run to resume") from None
                written += 1
                if db:  # after the part: a crash in between is healed by sync_parts
                    upserted += db.upsert(table)
                done += hi - lo
                if progress is not None:
                    progress(done, total)
    finally:
        if db:
            db.close()

    consolidate(out)
    ref = reference or {}
    ref_edges = (np.asarray(ref["score_histogram"]["edges"], dtype=float)
                 if "score_histogram" in ref else None)
    stats = _distribution(out, predictor, model_version, plan.current, prob_cols, ref_edges)
    by_reason = Counter(s["reason"] for s in plan.skipped)
    return ScoreSummary(
        model_name=model_name,
        model_version=model_version,
        eligible=plan.eligible,
        scored_now=done,
        already_scored=plan.already,
        skipped=plan.skipped,
        skipped_by_reason=dict(sorted(by_reason.items())),
        distribution=stats.summary(),
        drift=_drift(predictor, plan, stats, reference),
        seconds=time.perf_counter() - t0,
        peak_rss_mb=peak_rss_mb(),
        predictions_path=str(out / "predictions.parquet"),
        parts_written=written,
        db_rows_upserted=upserted,
        db_parts_synced=synced,
    )
