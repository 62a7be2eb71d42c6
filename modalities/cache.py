"""Content-addressed cache of preprocessed inputs, with atomic writes.

Layout under the cache root::

    <modality>/<key[:2]>/<key>.npy        preprocessed array (volumes, audio, tabular)
    <modality>/<key[:2]>/<key>.meta.json  what the array alone cannot say (volumes: the
                                          output affine and source orientation); written
                                          before the .npy, so an entry never lacks it
    <modality>/<key[:2]>/<key>.txt        de-identified, normalized note text
    <modality>/<key[:2]>/<key>.rejected.json  a cached rejection (code + message)
    memo/<fingerprint[:2]>/<fingerprint>  content hash of an input, keyed by its files'
                                          names, sizes and mtimes (skips re-hashing)

Every write goes to a temporary file in the same folder and is renamed into place, so a
crash never leaves a partial entry that a later run would trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modalities.base import CachedValue
from modalities.errors import InputRejected


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path`` (same folder, so rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


class TensorCache:
    """Stores one preprocessed value per (modality, key); keys are content addresses."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _base(self, modality: str, key: str) -> Path:
        return self.root / modality / key[:2] / key

    def path(self, modality: str, key: str) -> Path | None:
        """The stored file for ``key``, or None when absent."""
        base = self._base(modality, key)
        for suffix in (".npy", ".txt"):
            p = base.with_suffix(suffix)
            if p.exists():
                return p
        return None

    def has(self, modality: str, key: str) -> bool:
        return self.path(modality, key) is not None

    def put(self, modality: str, key: str, value: CachedValue) -> Path:
        """Store ``value`` (ndarray -> .npy, str -> .txt) atomically; return its path."""
        base = self._base(modality, key)
        if isinstance(value, str):
            path = base.with_suffix(".txt")
            atomic_write_bytes(path, value.encode("utf-8"))
        else:
            path = base.with_suffix(".npy")
            meta = getattr(value, "cache_meta", None)
            if meta is not None:
                atomic_write_bytes(
                    base.with_suffix(".meta.json"), json.dumps(meta, sort_keys=True).encode()
                )

            def _save(tmp: Path) -> None:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.ascontiguousarray(value), allow_pickle=False)

            atomic_write(path, _save)
        return path

    def get(self, modality: str, key: str, mmap: bool = False) -> CachedValue:
        """Load a stored value; KeyError when absent."""
        path = self.path(modality, key)
        if path is None:
            raise KeyError(f"{modality}/{key} is not in the cache at {self.root}")
        if path.suffix == ".txt":
            return path.read_text(encoding="utf-8")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)

    def get_meta(self, modality: str, key: str) -> dict | None:
        """The metadata stored with an array (e.g. a volume's ``affine``), or None if none."""
        p = self._base(modality, key).with_suffix(".meta.json")
        return json.loads(p.read_text()) if p.exists() else None

    def put_rejection(self, modality: str, key: str, error: InputRejected) -> None:
        """Remember that this exact content failed under this spec (no PHI: code + message)."""
        payload = {"code": str(error.code), "message": error.message}
        atomic_write_bytes(
            self._base(modality, key).with_suffix(".rejected.json"), json.dumps(payload).encode()
        )

    def get_rejection(self, modality: str, key: str) -> InputRejected | None:
        p = self._base(modality, key).with_suffix(".rejected.json")
        if not p.exists():
            return None
        payload = json.loads(p.read_text())
        return InputRejected(payload["code"], payload["message"])

    def memo_get(self, fingerprint: str) -> str | None:
        p = self.root / "memo" / fingerprint[:2] / fingerprint
        return p.read_text() if p.exists() else None

    def memo_put(self, fingerprint: str, content_hash: str) -> None:
        path = self.root / "memo" / fingerprint[:2] / fingerprint
        atomic_write_bytes(path, content_hash.encode())
