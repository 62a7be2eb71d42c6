"""Benchmark: batch scoring from the prepared cache vs a naive per-patient loop; memory.

Baseline (a), naive: for each manifest row, load the CT series, the MRI volume and the
note from the raw files with each modality's ``load`` + ``preprocess``, collate that one
sample and run the model on it (``Predictor.predict_samples([sample])``), one patient at a
time: what a script around the model would do.
(b) ``scoring.score_cohort`` on the prepared cohort of the same patients: cached
tensors streamed through a DataLoader in batches, Parquet part files written per batch,
consolidation and statistics included.

Memory: peak RSS of scoring a cohort 10x larger than the batch window (batch 8, 400 rows:
cohort rows replicated under new pseudonyms pointing at the same cache keys) vs the 1x
cohort, each in a fresh process (``ru_maxrss`` is a per-process high-water mark).

Prints patients/s of (a) and (b), their ratio (goal >= 10x on CPU), both RSS peaks and
their ratio (goal: ~1, flat in cohort size).

    python bench/score.py                 # 40 patients, tiny config (MiniLM notes)
    python bench/score.py --quick         # 16 patients, tiny random note encoder
    python bench/score.py --ct-shape 256 256 96   # hospital-sized CT series to load
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

MODS = ["ct", "mri", "note"]


def _overrides(note_model: str | None) -> list[str]:
    # The note embedding memo would let repeated notes skip the encoder: off, for fairness.
    out = ["cohort.modalities.note.encoder.embedding_cache=false"]
    if note_model:
        out.append(f"cohort.modalities.note.encoder.model={note_model}")
    return out


def predictor_config(note_model: str | None) -> dict[str, Any]:
    """A predictor config as ``train_variant`` builds it (tiny recipe, concat, 3 modalities)."""
    from fusion.artifact import ModelArtifact
    from workflows.config import load_config

    cfg = load_config("tiny", _overrides(note_model))
    return ModelArtifact.build(cfg.cohort, cfg.model, MODS, label_names=["label"]).to_config()


def prepare(
    work: Path, patients: int, note_model: str | None, ct_shape: tuple[int, int, int] | None
) -> tuple[Path, Path, float]:
    """Synthesize and ingest a cohort; returns (raw root, prepared folder, ingest seconds)."""
    from fusion.tasks import cohort_task
    from modalities.ingest import ingest_manifest
    from synth import SynthConfig, synth_cohort
    from workflows.config import load_config

    knobs = SynthConfig(ct_shape=ct_shape) if ct_shape else SynthConfig()
    synth = synth_cohort(work / "raw", patients=patients, seed=11, config=knobs)
    cfg = load_config("tiny", _overrides(note_model)).cohort
    prepared = work / "prepared"
    t0 = time.perf_counter()
    ingest_manifest(synth.manifest_path, cfg, synth.out, prepared, chunk_size=8,
                    labels=cohort_task(cfg))
    return synth.out, prepared, time.perf_counter() - t0


def naive_loop(predictor: Any, raw: Path) -> tuple[float, dict[str, float]]:
    """Per patient: load + preprocess raw files, collate one sample, forward once."""
    from modalities.cohort import read_manifest
    from modalities.errors import InputRejected
    from modalities.pseudonym import Pseudonymizer

    manifest = read_manifest(raw / "manifest.csv")
    pseudo = Pseudonymizer.from_env()
    probs: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, row in manifest.iterrows():
        sample: dict[str, Any] = {"patient": pseudo(row["patient_id"]),
                                  "label": np.array([np.nan], np.float32)}
        for m, mod in predictor.mods.items():
            if row[m] == "":
                continue
            try:
                source = mod.resolve(row[m], raw, f"manifest row {i}, column {m!r}")
                sample[m] = mod.preprocess(mod.load(source))
            except InputRejected:
                continue
        probs[sample["patient"]] = float(predictor.predict_samples([sample])[0])
    return time.perf_counter() - t0, probs


def replicate(prepared: Path, out: Path, factor: int) -> Path:
    """A prepared cohort with every row ``factor`` times under new pseudonyms (same cache)."""
    import pandas as pd

    out.mkdir(parents=True)
    for name in ("prepared.json", "quarantine.parquet"):
        shutil.copy(prepared / name, out / name)
    (out / "cache").symlink_to((prepared / "cache").resolve())
    f = pd.read_parquet(prepared / "cohort.parquet")
    copies = [f.assign(patient=f["patient"] + f"r{k}") for k in range(factor)]
    pd.concat(copies, ignore_index=True).to_parquet(out / "cohort.parquet", index=False)
    return out


def rss_child(args: argparse.Namespace) -> None:
    """Score one cohort in this fresh process and print its RSS numbers as JSON."""
    import torch

    from fusion.predictor import Predictor
    from scoring import score_cohort

    torch.set_num_threads(args.threads)
    cfg = json.loads(Path(args.rss_child[2]).read_text())
    predictor = Predictor(cfg, device="cpu")
    predictor.model.load_state_dict(torch.load(args.rss_child[3]))
    predictor.to_device()
    before = _status_mb("VmRSS")
    # Reset the kernel's high-water mark (Linux >= 4.0) so the peak is scoring's own.
    Path("/proc/self/clear_refs").write_text("5")
    s = score_cohort(Path(args.rss_child[0]), predictor, Path(args.rss_child[1]), "bench", "1",
                     batch_size=args.rss_batch)
    # s.peak_rss_mb (ru_maxrss) is not used: after fork+exec it can carry the parent's RSS.
    print(json.dumps({"rows": s.scored_now, "before_mb": before, "peak_mb": _status_mb("VmHWM"),
                      "seconds": s.seconds}))


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def flow_overhead(predictor: Any, cfg: dict[str, Any], prepared: Path,
                  work: Path) -> dict[str, tuple[float, float]]:
    """Wall time of the real score flow (Prefect ephemeral server, model loaded from MLflow
    by alias, scoring run logged) vs the time spent inside ``score_cohort``; first run (cold
    Prefect start) and a second run in the same process (fresh output folder)."""
    import time

    from registry.model import log_model
    from registry.tracking import Tracker

    uri = f"sqlite:///{work / 'mlflow.db'}"
    with Tracker("bench", "model", tracking_uri=uri, workdir=work) as tracker:
        log_model(tracker, predictor.model.state_dict(), cfg,
                  builder="fusion.predictor:build_predictor", registered_name="bench",
                  alias="champion")
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    from workflows.score import score_flow

    out: dict[str, tuple[float, float]] = {}
    for label in ("cold Prefect start", "warm"):
        t0 = time.perf_counter()
        summary = score_flow(str(prepared), str(work / f"flow-{label[:4]}"),
                             "models:/bench@champion", tracking_uri=uri, workdir=str(work),
                             batch_size=64, db_url_env=None)
        out[label] = (time.perf_counter() - t0, summary["seconds"])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--patients", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64, help="batched scoring")
    p.add_argument("--rss-batch", type=int, default=8, help="batch size of the RSS runs")
    p.add_argument("--rss-factor", type=int, default=10, help="cohort multiple for RSS")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--repeats", type=int, default=3, help="batched runs (median reported)")
    p.add_argument("--note-model", default=None, help="note encoder (default: the recipe's)")
    p.add_argument("--ct-shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="synthetic CT voxels (default synth's 48 48 24; e.g. 256 256 96)")
    p.add_argument("--quick", action="store_true", help="16 patients, tiny random notes")
    p.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--no-overhead", dest="overhead", action="store_false",
                   help="skip timing the Prefect flow + MLflow (model load, scoring run)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CLINFUSE_PSEUDONYM_KEY", "bench-key-not-a-secret-0123456789")
    if a.rss_child:
        rss_child(a)
        return
    if a.quick:
        a.patients, a.note_model = 16, a.note_model or "tiny-random"

    import torch

    from fusion.predictor import Predictor
    from scoring import score_cohort

    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="clinfuse-bench-score-"))
    try:
        raw, prepared, ingest_s = prepare(work, a.patients, a.note_model,
                                         tuple(a.ct_shape) if a.ct_shape else None)
        cfg = predictor_config(a.note_model)
        torch.manual_seed(0)
        predictor = Predictor(cfg, device="cpu").to_device()
        # One untimed forward on a cached sample: first-call costs out of both timings.
        from fusion.data import PreparedCohort

        pc = PreparedCohort(prepared, predictor.cohort)
        predictor.predict_samples([pc.dataset(pc.usable(MODS, labeled=False), MODS)[0]])

        naive_s, naive_probs = naive_loop(predictor, raw)
        # Median of a few fresh runs: one short run is at the mercy of shared-core bursts.
        runs = [score_cohort(prepared, predictor, work / f"scored{r}", "bench", "1",
                             batch_size=a.batch_size) for r in range(a.repeats)]
        summary = sorted(runs, key=lambda s: s.seconds)[len(runs) // 2]
        import pandas as pd

        df = pd.read_parquet(work / "scored0" / "predictions.parquet")
        common = [pt for pt in df["patient"] if pt in naive_probs]
        diff = max((abs(naive_probs[pt] - v) for pt, v in
                    zip(df["patient"], df["probability"], strict=True) if pt in naive_probs),
                   default=float("nan"))
        n_naive, n_batch = len(naive_probs), summary.scored_now
        naive_pps, batch_pps = n_naive / naive_s, n_batch / summary.seconds

        overhead = flow_overhead(predictor, cfg, prepared, work) if a.overhead else None

        # Memory: 1x and Nx cohorts, each scored in a fresh process.
        weights, cfg_path = work / "weights.pt", work / "cfg.json"
        torch.save(predictor.model.state_dict(), weights)
        cfg_path.write_text(json.dumps(cfg))
        rss: dict[int, dict[str, float]] = {}
        for factor in (1, a.rss_factor):
            cohort = replicate(prepared, work / f"x{factor}", factor)
            cmd = [sys.executable, __file__, "--rss-child", str(cohort),
                   str(work / f"x{factor}-out"), str(cfg_path), str(weights),
                   "--rss-batch", str(a.rss_batch), "--threads", str(a.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rss[factor] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"cohort: {a.patients} synthetic patients, tiny recipe, modalities {MODS}, "
          f"note model {cfg['cohort']['modalities']['note']['encoder'].get('model', 'default')}"
          f", CT {a.ct_shape or 'synth default'} voxels, {a.threads} torch threads, "
          f"ingest (not timed below) {ingest_s:.1f}s")
    print(f"(a) naive per-patient loop (raw load + preprocess + forward of one): "
          f"{n_naive} patients in {naive_s:.2f}s = {naive_pps:.1f} patients/s")
    print(f"(b) score_cohort from the prepared cache, batch {a.batch_size}, median of "
          f"{a.repeats}: "
          f"{n_batch} patients in {summary.seconds:.2f}s = {batch_pps:.1f} patients/s")
    print(f"ratio (b)/(a): {batch_pps / naive_pps:.1f}x  (goal >= 10x)")
    print(f"same patients scored: {len(common)}; max |p_naive - p_batched| = {diff:.2e}")
    if overhead:
        for label, (wall, inner) in overhead.items():
            print(f"(c) score flow, {label}: {wall:.2f}s wall, {inner:.2f}s inside score_cohort"
                  f" -> Prefect + MLflow overhead {100 * (1 - inner / wall):.1f}% of wall time"
                  "  (goal < 5%)")
    one, many = rss[1], rss[a.rss_factor]
    for r in (one, many):
        print(f"peak RSS while scoring {int(r['rows'])} rows, batch {a.rss_batch}: "
              f"{r['peak_mb']:.0f} MiB (RSS before scoring {r['before_mb']:.0f} MiB, "
              f"{r['seconds']:.1f}s)")
    print(f"RSS ratio {a.rss_factor}x / 1x cohort: {many['peak_mb'] / one['peak_mb']:.3f}; "
          f"growth over the pre-scoring RSS: {one['peak_mb'] - one['before_mb']:.0f} vs "
          f"{many['peak_mb'] - many['before_mb']:.0f} MiB  (goal: flat)")


if __name__ == "__main__":
    main()
