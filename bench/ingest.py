"""Benchmark: ingesting one CT series, naive MONAI pipeline vs clinfuse (cold and warm).

Baseline (a): ``LoadImage(reader="PydicomReader")`` -> ``EnsureChannelFirst`` ->
``Orientation("RAS")`` -> ``Spacing((2,2,2))`` -> ``ScaleIntensityRange`` ->
``ResizeWithPadOrCrop``, the pipeline a MONAI tutorial would write (and which does not
validate slice gaps).
(b) cold: ``CTModality.load`` (header validation + 2-thread decode) + ``preprocess``
(RAS, area/trilinear ``Resize`` to 2 mm, HU window, crop/pad); the content hash is timed
separately since ingest pays it once per new input.
(c) warm: what a re-run pays per unchanged input: ``stat_fingerprint`` -> memo lookup ->
cache key -> cached ``.npy`` exists -> ``np.load``.

Prints series/s of each and the ratios against (a) (goals: cold >= 2x, warm >= 50x).

    python bench/ingest.py              # 160 slices of 512x512 int16
    python bench/ingest.py --quick      # 40 slices of 128x128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def phantom(size: int, slices: int, seed: int = 0) -> np.ndarray:
    """A body-like HU volume (X, Y, Z): air, fat/soft-tissue ellipse, bone ring, noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
    inner = (x / 0.75) ** 2 + (y / 0.55) ** 2 <= 1
    bone = ((x / 0.3) ** 2 + ((y + 0.3) / 0.2) ** 2 <= 1) & ~(
        (x / 0.22) ** 2 + ((y + 0.3) / 0.13) ** 2 <= 1
    )
    plane = np.full((size, size), -1000.0)
    plane[body] = -100.0  # fat
    plane[inner] = 40.0  # soft tissue
    plane[bone] = 700.0
    vol = np.repeat(plane[:, :, None], slices, axis=2)
    z = np.linspace(0, np.pi, slices)
    vol[inner] += (60 * np.sin(z))[None, :]  # anatomy changing along z
    vol += rng.normal(0, 20, vol.shape)
    return vol.astype(np.float32)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (after one untimed warm-up) and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=160)
    p.add_argument("--size", type=int, default=512, help="rows = columns")
    p.add_argument("--pixel-spacing", type=float, default=0.7, help="in-plane mm")
    p.add_argument("--slice-spacing", type=float, default=1.25, help="mm between slices")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warm-repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--workers", type=int, default=2, help="DICOM decode threads")
    p.add_argument("--quick", action="store_true", help="40 slices of 128x128, 2 repeats")
    a = p.parse_args(argv)
    if a.quick:
        a.slices, a.size, a.repeats, a.pixel_spacing = 40, 128, 2, 2.8

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(a.threads)
    from modalities.cache import TensorCache
    from modalities.ct import CTModality
    from modalities.dicom import quiet_dicom_logs
    from modalities.paths import stat_fingerprint
    from synth.dicom_writer import write_dicom_series

    quiet_dicom_logs()
    import monai.transforms as mt

    mod = CTModality({"min_slices": 8})  # default CT spec: 2 mm, 64^3, HU (-1000, 400)
    sp, size, (lo, hi) = mod.spec.spacing, mod.spec.size, mod.spec.window
    mod.decode_workers = a.workers
    with tempfile.TemporaryDirectory(prefix="clinfuse-bench-") as tmp:
        folder = Path(tmp) / "series"
        t0 = time.perf_counter()
        write_dicom_series(
            folder,
            phantom(a.size, a.slices),
            pixel_spacing=(a.pixel_spacing, a.pixel_spacing),
            slice_spacing=a.slice_spacing,
            origin=(-a.size * a.pixel_spacing / 2, -a.size * a.pixel_spacing / 2, 0.0),
        )
        mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
        print(
            f"series: {a.slices} slices of {a.size}x{a.size} int16, {mb:.0f} MB "
            f"(written in {time.perf_counter() - t0:.1f} s); spec spacing {sp} mm, size {size}; "
            f"torch threads {a.threads}, decode workers {a.workers}, cpus {os.cpu_count()}"
        )

        naive = mt.Compose(
            [
                mt.LoadImage(reader="PydicomReader", image_only=True),
                mt.EnsureChannelFirst(),
                mt.Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                mt.Spacing(pixdim=sp, mode="bilinear"),
                mt.ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
                mt.ResizeWithPadOrCrop(spatial_size=size),
            ]
        )
        t_naive, out_naive = timed(lambda: naive(str(folder)), a.repeats)
        t_cold, out_cold = timed(lambda: mod.preprocess(mod.load(folder)), a.repeats)
        t_hash, content = timed(lambda: mod.content_hash(folder), a.repeats)

        cache = TensorCache(Path(tmp) / "cache")
        fingerprint = stat_fingerprint(folder, salt=mod.name)
        cache.memo_put(fingerprint, str(content))
        cache.put(mod.name, mod.cache_key(str(content)), out_cold)

        def warm() -> np.ndarray:
            memo = cache.memo_get(stat_fingerprint(folder, salt=mod.name))
            assert memo is not None
            key = mod.cache_key(memo)
            assert cache.has(mod.name, key)
            return cache.get(mod.name, key)  # type: ignore[return-value]

        t_warm, out_warm = timed(warm, a.warm_repeats)
        assert np.array_equal(out_warm, out_cold)

    diff = np.abs(np.asarray(out_naive, dtype=np.float32) - out_cold.astype(np.float32))
    rows = [
        ("naive MONAI (LoadImage+Spacing)", t_naive),
        ("clinfuse cold (load+preprocess)", t_cold),
        ("clinfuse cold + content hash", t_cold + t_hash),
        ("clinfuse warm (cache hit)", t_warm),
    ]
    print(f"{'pipeline':34s} {'s/series':>10s} {'series/s':>10s} {'vs naive':>9s}")
    for name, t in rows:
        print(f"{name:34s} {t:10.4f} {1 / t:10.2f} {t_naive / t:8.1f}x")
    print(
        f"output {tuple(out_cold.shape)} {out_cold.dtype}; mean |naive - cold| = "
        f"{diff.mean():.4f} (window units, resampling differs: bilinear grid vs area)"
    )
    print(
        f"goals: cold >= 2x naive: {'met' if t_naive / t_cold >= 2 else 'NOT met'}; "
        f"warm >= 50x naive: {'met' if t_naive / t_warm >= 50 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
