"""The content-addressed cache writes atomically and round-trips values and rejections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modalities.cache import TensorCache, atomic_write
from modalities.errors import InputRejected, ReasonCode


def test_roundtrip_array_text_rejection_memo(tmp_path: Path) -> None:
    cache = TensorCache(tmp_path)
    arr = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    cache.put("ct", "ab" * 20, arr)
    cache.put("note", "cd" * 20, "de-identified text")
    np.testing.assert_array_equal(cache.get("ct", "ab" * 20), arr)
    assert cache.get("note", "cd" * 20) == "de-identified text"
    assert not cache.has("ct", "ef" * 20)
    with pytest.raises(KeyError):
        cache.get("ct", "ef" * 20)
    cache.put_rejection("ct", "ef" * 20, InputRejected(ReasonCode.MISSING_SLICES, "gap"))
    rej = cache.get_rejection("ct", "ef" * 20)
    assert rej is not None and rej.code is ReasonCode.MISSING_SLICES and rej.message == "gap"
    assert not cache.has("ct", "ef" * 20)
    cache.memo_put("1234abcd", "hash")
    assert cache.memo_get("1234abcd") == "hash" and cache.memo_get("ffff0000") is None


def test_crash_mid_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x" / "out.npy"

    def boom(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_array_metadata_stored_beside_the_array(tmp_path: Path) -> None:
    # A volume's affine travels as ``cache_meta`` on an ndarray subclass (GeoArray).
    from modalities.volume import GeoArray

    cache = TensorCache(tmp_path)
    arr = np.zeros((1, 2, 2, 2), np.float16).view(GeoArray)
    arr.cache_meta = {"affine": np.diag([2.0, 2, 2, 1]).tolist(), "source_axcodes": "LPS"}
    path = cache.put("ct", "ab" * 20, arr)
    assert cache.get_meta("ct", "ab" * 20) == arr.cache_meta
    assert type(cache.get("ct", "ab" * 20)) is np.ndarray  # plain array back
    assert sorted(p.name for p in path.parent.iterdir()) == [
        f"{'ab' * 20}.meta.json",
        f"{'ab' * 20}.npy",
    ]
    cache.put("ct", "cd" * 20, np.zeros(3))  # no metadata: nothing extra written
    assert cache.get_meta("ct", "cd" * 20) is None
