"""Reading input files so that no input can hang or flood ingest.

Only regular files are ever opened: a FIFO blocks ``open()`` until a writer appears, and a
device such as ``/dev/zero`` never ends, so hashing or reading either would stall a whole
run. Reads are capped, so one huge file costs at most ``max_bytes`` of memory. Messages
name no path (hospital exports put MRNs and names in file names).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modalities.errors import InputRejected, ReasonCode

# O_NONBLOCK: if a file is swapped for a FIFO between the check and the open, the open
# returns at once instead of waiting for a writer; fstat then rejects it.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


def not_regular(what: str = "input") -> InputRejected:
    """The rejection for a FIFO, socket or device where a file is expected."""
    return InputRejected(
        ReasonCode.NOT_REGULAR_FILE,
        f"the {what} is not a regular file (a FIFO, socket or device); point the manifest "
        "at an exported file",
    )


def regular_file(path: Path | str, what: str = "input") -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed), rejecting anything but a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputRejected(
            ReasonCode.MISSING_FILE,
            f"the {what} does not exist (or is a broken link); fix the manifest entry",
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(what)
    return st


def read_capped(path: Path | str, max_bytes: int, what: str = "input") -> bytes:
    """All bytes of a regular file, or ``InputRejected`` when it is larger than ``max_bytes``.

    The size is checked on the open descriptor and the read stops after ``max_bytes + 1``
    bytes, so a file that grows while being read is still bounded.
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(what)
        if st.st_size > max_bytes:
            raise too_large(what, max_bytes)
        chunks, left = [], max_bytes + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise too_large(what, max_bytes)
    return data


def too_large(what: str, max_bytes: int) -> InputRejected:
    """The rejection for an input over its size cap (``NOTE_TOO_LARGE`` for notes)."""
    code = ReasonCode.NOTE_TOO_LARGE if what == "note" else ReasonCode.UNSUPPORTED_FORMAT
    return InputRejected(
        code,
        f"the {what} is larger than the cap of {max_bytes} bytes; is it an export dump "
        "rather than one input? split it, or raise the modality's spec.max_bytes",
    )


def check_tree(base: Path, root: Path, what: str = "input") -> None:
    """Reject a file or folder whose files are not all regular files under ``root``.

    Walks like ``paths.source_files`` (recursive, hidden names skipped, folder links not
    followed). A file symlinked out of the data root is ``PATH_OUTSIDE_ROOT`` even when its
    folder is inside: the data root is the boundary of what ingest may read.
    """
    root = root.resolve()
    entries = (
        [base]
        if not base.is_dir()
        else [
            Path(dirpath) / name
            for dirpath, _dirs, names in os.walk(base)
            for name in names
            if not name.startswith(".")
        ]
    )
    for entry in entries:
        if entry.is_symlink():
            target = entry.resolve()
            if target != root and root not in target.parents:
                raise InputRejected(
                    ReasonCode.PATH_OUTSIDE_ROOT,
                    f"a file of the {what} is a link that resolves outside the data root; "
                    "copy the file under --data-root",
                )
        regular_file(entry, what)
