"""Resolving manifest entries to files under a data root, and naming them safely.

A manifest value is a path relative to the data root (or absolute inside it), optionally
``folder#SeriesInstanceUID`` to pick one series out of a mixed folder. Anything that
resolves outside the root (``..``, absolute paths elsewhere, symlinks out) is rejected.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from modalities.errors import InputRejected, ReasonCode


@dataclass(frozen=True)
class SeriesRef:
    """One DICOM series inside a folder that may hold others (``folder#uid`` in a manifest)."""

    folder: Path
    series_uid: str

    def __str__(self) -> str:
        return f"{self.folder}#{self.series_uid}"


Source = Path | SeriesRef | str  # str = inline text (notes)


def resolve_under_root(value: str, root: Path, ref: str) -> Path | SeriesRef:
    """Resolve ``value`` against ``root``; reject paths outside it or missing files.

    ``ref`` is the sanitized name of the input used in error messages.
    """
    path_part, _, uid = value.partition("#")
    root = root.resolve()
    path = Path(path_part).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    if path != root and root not in path.parents:
        raise InputRejected(
            ReasonCode.PATH_OUTSIDE_ROOT,
            "path resolves outside the data root; move the file under --data-root or "
            "point --data-root at its parent",
            ref,
        )
    if not path.exists():
        raise InputRejected(
            ReasonCode.MISSING_FILE, "file or folder does not exist; fix the manifest entry", ref
        )
    if uid:
        if not path.is_dir():
            raise InputRejected(
                ReasonCode.UNSUPPORTED_FORMAT, "a '#series' selector needs a folder", ref
            )
        return SeriesRef(path, uid)
    return path


def source_files(source: Path | SeriesRef) -> list[Path]:
    """All regular files an input consists of, sorted (folders are walked recursively)."""
    base = source.folder if isinstance(source, SeriesRef) else source
    if base.is_file():
        return [base]
    out = []
    for dirpath, _dirs, files in os.walk(base):
        out.extend(Path(dirpath) / f for f in files if not f.startswith("."))
    return sorted(out)


def stat_fingerprint(source: Path | SeriesRef, salt: str = "") -> str:
    """Cheap fingerprint from file names, sizes and mtimes (keys the content-hash memo)."""
    h = hashlib.blake2b(salt.encode(), digest_size=20)
    h.update(str(source).encode())
    for f in source_files(source):
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def safe_reference(row: int, column: str) -> str:
    """Name an input without PHI: its manifest row and column.

    Paths are left out on purpose: hospital exports often name folders after MRNs or
    patient names. The data team holds the manifest, so row + column locates the file.
    """
    return f"manifest row {row}, column {column!r}"
