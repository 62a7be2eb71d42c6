"""Predictions as Parquet: one atomic part file per scored batch, consolidated at the end.

``OUT/parts/part-<batchhash>.parquet`` is written through ``atomic_write`` (temp file +
rename), so a part is complete or absent; interrupted writes leave only dot-prefixed temp
files, which are ignored. The part name is a digest of the batch's row keys (same rows, same
file). ``consolidate`` streams all parts into ``OUT/predictions.parquet``, deduplicated by
key and written atomically; its schema metadata records which parts it was built from, so an
unchanged folder leaves it byte for byte as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modalities.cache import atomic_write
from scoring.errors import ScoringError
from scoring.stores.base import KEY_COLUMNS

PARTS_META = b"clinfuse.parts"  # Parquet schema metadata: digest of the consolidated parts
READ_ROWS = 65536  # rows per streamed read of predictions.parquet


def part_files(out: Path) -> list[Path]:
    """Finished part files, sorted (temporary files of interrupted writes start with '.')."""
    return sorted((Path(out) / "parts").glob("part-*.parquet"))


def batch_hash(keys: list[tuple[str, str]], model_version: str) -> str:
    """Part file name: a digest of the batch's row keys (same rows -> same file)."""
    h = hashlib.blake2b(model_version.encode(), digest_size=12)
    for patient, ihash in sorted(keys):
        h.update(f"{patient}\0{ihash}\n".encode())
    return h.hexdigest()


def read_keys(part: Path) -> pa.Table:
    """The key columns of one part; an unreadable part is a ``ScoringError``."""
    try:
        return pq.read_table(part, columns=list(KEY_COLUMNS))
    except (OSError, pa.ArrowException) as err:
        raise ScoringError(
            f"prediction part {part} cannot be read ({type(err).__name__}); delete it and "
            "re-run to score its rows again"
        ) from None


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
    parts = part_files(out)
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


class ParquetStore:
    """A ``PredictionStore`` in a folder: ``parts/`` while scoring, ``predictions.parquet``
    after ``finish``. Creates nothing until the first batch is written."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.target = self.out / "predictions.parquet"
        self.location = str(self.target)
        self.parts_written = 0

    def part_files(self) -> list[Path]:
        return part_files(self.out)

    def part_keys(self) -> list[tuple[Path, pa.Table]]:
        """(part, its key columns) for every finished part."""
        return [(p, read_keys(p)) for p in self.part_files()]

    def read_part(self, part: Path) -> pa.Table:
        return pq.read_table(part)

    def done_keys(self, model_version: str) -> set[tuple[str, str]]:
        """(patient, input_hash) of every row of ``model_version`` already in the parts."""
        done: set[tuple[str, str]] = set()
        for _, t in self.part_keys():
            mask = np.asarray(t.column("model_version").to_pylist(), dtype=object) == model_version
            pats = np.asarray(t.column("patient").to_pylist(), dtype=object)[mask]
            hashes = np.asarray(t.column("input_hash").to_pylist(), dtype=object)[mask]
            done.update(zip(pats, hashes, strict=True))
        return done

    def write(self, table: pa.Table) -> int:
        """One part file per batch, named by its keys, written atomically."""
        versions = set(table.column("model_version").to_pylist())
        if len(versions) != 1:
            raise ValueError("a batch holds rows of exactly one model version")
        keys = list(zip(table.column("patient").to_pylist(),
                        table.column("input_hash").to_pylist(), strict=True))
        part = self.out / "parts" / f"part-{batch_hash(keys, versions.pop())}.parquet"
        try:
            atomic_write(part, lambda p: pq.write_table(table, p))
        except OSError as err:
            raise ScoringError(f"could not write prediction part {part} "
                               f"({type(err).__name__}); check disk space and "
                               "permissions, then re-run to resume") from None
        self.parts_written += 1
        return len(table)

    def finish(self) -> None:
        consolidate(self.out)

    def rows(self, model_version: str, columns: list[str]) -> Iterator[pa.Table]:
        """Stream ``columns`` of ``model_version``'s rows of predictions.parquet."""
        if not self.target.is_file():
            return
        read = list(dict.fromkeys(["model_version", *columns]))
        for rb in pq.ParquetFile(self.target).iter_batches(batch_size=READ_ROWS, columns=read):
            t = pa.Table.from_batches([rb])
            keep = np.asarray(t.column("model_version").to_pylist(), dtype=object) == model_version
            if keep.any():
                yield t.filter(pa.array(keep)).select(columns)

    def counts(self) -> dict[str, int]:
        return {"parts_written": self.parts_written}

    def close(self) -> None:
        """Nothing to release (files are closed after each write)."""
