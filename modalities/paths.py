"""Resolving manifest entries to files under a data root, and naming them safely.

A manifest value is a path relative to the data root (or absolute inside it), optionally
``folder#SeriesInstanceUID`` to pick one series out of a mixed folder. ``#`` is a selector
only when a UID follows it (digits and dots, two components or more) and the whole value
is not itself an existing path, so ``scans/CT #2`` and ``notes/visit#2.txt`` stay paths.
Anything that resolves outside the root (``..``, absolute paths elsewhere, symlinks out,
also for the files inside a series folder) is rejected, and only regular files pass: a
FIFO or a device would hang the reader.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from modalities.errors import InputRejected, ReasonCode
from modalities.files import check_tree, regular_file


@dataclass(frozen=True)
class SeriesRef:
    """One DICOM series inside a folder that may hold others (``folder#uid`` in a manifest)."""

    folder: Path
    series_uid: str

    def __str__(self) -> str:
        return f"{self.folder}#{self.series_uid}"


Source = Path | SeriesRef | str  # str = inline text (notes)


_UID = re.compile(r"[0-9]+(?:\.[0-9]+)+")


def split_selector(value: str, root: Path) -> tuple[str, str]:
    """``(path, series_uid)``; the UID is ``""`` unless the value ends in ``#<uid>``.

    A ``#`` followed by anything but a UID is part of the path, and a value that names an
    existing path as a whole is a path even if it ends like a selector.
    """
    head, sep, tail = value.rpartition("#")
    if not sep or not _UID.fullmatch(tail):
        return value, ""
    try:
        whole_exists = _absolute(value, root).exists()
    except (OSError, ValueError):
        whole_exists = False
    return (value, "") if whole_exists else (head, tail)


def _absolute(value: str, root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def resolve_under_root(
    value: str, root: Path, ref: str, selectors: bool = False, folders: bool = True
) -> Path | SeriesRef:
    """Resolve ``value`` against ``root``; reject paths outside it, missing or odd files.

    ``ref`` is the sanitized name of the input used in error messages. ``selectors``
    allows ``folder#uid`` (DICOM series only: elsewhere ``#`` is part of the name);
    ``folders`` allows a folder (then every file in it must be a regular file under the
    root).
    """
    root = root.resolve()
    path_part, uid = split_selector(value, root) if selectors else (value, "")
    try:
        path = _absolute(path_part, root).resolve()
    except (OSError, ValueError):  # NUL byte, name too long, symlink loop
        raise InputRejected(
            ReasonCode.MISSING_FILE, "the manifest entry is not a usable path; fix it", ref
        ) from None
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
    if uid and not path.is_dir():
        raise InputRejected(
            ReasonCode.UNSUPPORTED_FORMAT, "a '#series' selector needs a folder", ref
        )
    if path.is_dir() and not folders:
        raise InputRejected(
            ReasonCode.NOT_REGULAR_FILE,
            "the entry names a folder where a file is expected; point it at the file",
            ref,
        )
    try:
        check_tree(path, root)
    except InputRejected as err:
        raise err.with_source(ref) from None
    return SeriesRef(path, uid) if uid else path


def source_files(source: Path | SeriesRef) -> list[Path]:
    """All files an input consists of, sorted (folders are walked recursively).

    Raises ``NOT_REGULAR_FILE`` if one is a FIFO, socket or device: callers read every
    file listed, and such a file would block or never end.
    """
    base = source.folder if isinstance(source, SeriesRef) else source
    if not base.is_dir():
        regular_file(base)
        return [base]
    out = []
    for dirpath, _dirs, files in os.walk(base):
        out.extend(Path(dirpath) / f for f in files if not f.startswith("."))
    for f in out:
        regular_file(f, "file in the series folder")
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
