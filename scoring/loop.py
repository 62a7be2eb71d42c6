"""Batch scoring of a prepared cohort: exactly-once, resumable predictions into a store.

``score_into`` streams a prepared cohort from the tensor cache through a ``Predictor`` in
batches and hands each finished batch to a ``PredictionStore`` (``scoring.stores``). On
start the keys the store already holds are skipped, so a re-run or a resume after SIGKILL
scores only what is missing and never writes a row twice. The run ends by finishing the
store (consolidation) and summarising counts, the score distribution and input drift.
``score_cohort`` is the usual entry: Parquet parts under ``out``, mirrored to PostgreSQL
when a database URL is given.

What a row holds is the task's: probability columns, a decision and the threshold for a
classification task; one ``embedding_<tower>`` column per tower for a retrieval (embedding)
task, whose run ends by writing the embeddings export and the top-k neighbours of the
scored cohort (``scoring.retrieval``) instead of the score distribution and drift.

Memory stays bounded whatever the cohort size: cohort.parquet is read in row windows, the
DataLoader holds a few batches, predictions go to the store batch by batch, and the score
distribution is accumulated as fixed-size histograms. What grows with the cohort is a set
of short key strings (to skip and deduplicate rows), not inputs or predictions.
"""

from __future__ import annotations

import json
import resource
import time
from collections import Counter
from collections.abc import Callable
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
from fusion.device import autocast, pin_memory
from fusion.predictor import Predictor
from modalities.cache import TensorCache
from modalities.errors import ConfigError
from scoring.drift import distribution, drift, reference_edges
from scoring.plan import Plan, accepted, pending_chunks, plan, window_keys
from scoring.retrieval import (
    DEFAULT_TOP_K,
    DRIFT_SKIPPED,
    embedding_arrays,
    embedding_columns,
    export_retrieval,
    zero_shot_prompts,
)
from scoring.stores import PredictionStore, open_store


@dataclass
class ScoreSummary:
    """What one scoring run did. Holds pseudonyms and counts only (safe for logs/results).

    ``skipped`` lists ``{"patient", "reason"}`` for every patient in the prepared cohort
    (or its quarantine) that the model cannot score. ``distribution`` and ``drift`` cover
    every current prediction of this model version, whether scored now or earlier.
    ``peak_rss_mb`` is the process's peak resident set (getrusage), not this run's alone
    (in a freshly exec'd child it may even include the parent's RSS at fork time).
    A retrieval model's ``distribution`` counts embeddings per tower and the share of
    queries whose own partner is among their top-k (``partner_recall``), its ``drift``
    says why score drift is skipped, and ``extras`` holds ``top_k`` and the export paths.
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


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- output schema
# Task-dependent: which columns a task writes and how it decides (kept small to swap).


def output_columns(predictor: Predictor) -> tuple[list[str], list[str]]:
    """(output column names, output names): the task's probability columns
    (``Task.probability_columns``), or one embedding column per tower."""
    if predictor.towers is not None:
        return embedding_columns(predictor.towers), list(predictor.towers)
    n = len(np.atleast_1d(predictor.prior))
    return predictor.task_rules.probability_columns(predictor.config.get("label_names"), n)


def _predictions(predictor: Predictor, probs: np.ndarray, names: list[str]) -> pa.Array:
    """The task's decisions (``Task.decide``): 0/1, class index, or comma-joined labels."""
    decided = predictor.task_rules.decide(probs, predictor.threshold, names)
    if isinstance(decided, np.ndarray):
        return pa.array(decided.astype(np.int64))
    return pa.array(list(decided), pa.string())  # typed even when the batch is empty


def output_arrays(
    predictor: Predictor, outputs: np.ndarray, out_cols: list[str], names: list[str]
) -> dict[str, pa.Array]:
    """A batch's task columns: probabilities, decision and threshold; or embeddings."""
    if predictor.towers is not None:
        return embedding_arrays(predictor.towers, outputs)
    probs = outputs.reshape(len(outputs), len(out_cols))
    cols = {c: pa.array(probs[:, k].astype(np.float64)) for k, c in enumerate(out_cols)}
    cols["prediction"] = _predictions(predictor, probs, names)
    cols["threshold"] = pa.array([predictor.threshold] * len(probs), pa.float64())
    return cols


def _batch_table(
    predictor: Predictor, chunk: pd.DataFrame, outputs: dict[str, pa.Array], model_name: str,
    model_version: str, hashes: list[str],
) -> pa.Table:
    n = len(chunk)
    cols: dict[str, pa.Array] = {
        "patient": pa.array(chunk["patient"].astype(str).tolist(), pa.string()),
        "model_name": pa.array([model_name] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "input_hash": pa.array(hashes, pa.string()),
    }
    cols |= outputs
    for m in predictor.modalities:
        cols[f"present_{m}"] = pa.array(accepted(chunk, m))
    now = datetime.now(UTC)
    cols["scored_at"] = pa.array([now] * n, pa.timestamp("us", tz="UTC"))
    return pa.table(cols)


@torch.inference_mode()
def _batch_outputs(predictor: Predictor, batch: Any) -> np.ndarray:
    """The task's per-row outputs (``Task.outputs``) for one batch; embeddings of a tower
    the row lacks are NaN."""
    with autocast(predictor.device, True):
        result = predictor.model(batch.inputs, batch.present)
    outputs = predictor.task_rules.outputs(result).float().cpu().numpy()
    for k, t in enumerate(predictor.towers or ()):
        outputs[~batch.present[t].cpu().numpy(), k] = np.nan
    return outputs


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


def score_into(
    store: PredictionStore,
    prepared: Path,
    predictor: Predictor,
    model_name: str,
    model_version: str,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    reference: dict[str, Any] | None = None,
    exports: Path | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> ScoreSummary:
    """Score every eligible patient not yet in ``store``, once; finishes, does not close it.

    The inputs must already be checked (``score_cohort`` does). ``progress(done, total)``
    is called after each written batch (``total``: rows pending at start). A retrieval
    model's embeddings export and ``top_k`` neighbours are written into ``exports`` (none
    without it).
    """
    t0 = time.perf_counter()
    prepared = Path(prepared)
    mods = list(predictor.modalities)
    out_cols, names = output_columns(predictor)
    window = batch_size * 16  # cohort rows read per step: bounded, independent of N
    todo = plan(prepared, mods, model_name, model_version,
                store.done_keys(model_version), window)

    predictor.to_device()
    device = predictor.device
    cache = TensorCache(prepared / "cache")
    collate = Collator(predictor.mods, predictor.task)
    columns = ["patient"] + [f"{m}_{s}" for m in mods for s in ("status", "key")]
    total, done = len(todo.pending_rows), 0
    for chunk in pending_chunks(prepared, columns, todo.pending_rows, window):
        _, hashes = window_keys(chunk, mods, model_name, model_version)
        dataset = CohortDataset(chunk, cache, predictor.mods, predictor.cohort.labels)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                            collate_fn=collate, num_workers=num_workers,
                            pin_memory=pin_memory(device))
        for b, batch in enumerate(loader):
            lo, hi = b * batch_size, b * batch_size + len(batch.patients)
            outputs = _batch_outputs(predictor, batch.to(device))
            store.write(_batch_table(predictor, chunk.iloc[lo:hi],
                                     output_arrays(predictor, outputs, out_cols, names),
                                     model_name, model_version, hashes[lo:hi]))
            done += hi - lo
            if progress is not None:
                progress(done, total)

    store.finish()
    rows = store.rows(model_version, ["patient", "input_hash", *out_cols])
    if predictor.towers is not None:
        dim = int(np.shape(predictor.prior)[-1])
        dist, extras = export_retrieval(rows, todo.current, predictor.towers, dim, exports,
                                        top_k, model_name, model_version,
                                        zero_shot_prompts(predictor) if exports else None)
        drifted = _presence_only(mods, todo) | {"skipped": DRIFT_SKIPPED}
    else:
        stats = distribution(rows, todo.current, out_cols, predictor.task,
                             predictor.threshold, reference_edges(reference))
        dist, extras = stats.summary(), {}
        drifted = drift(mods, todo.presence, todo.eligible, predictor.prior, stats, reference)
    by_reason = Counter(s["reason"] for s in todo.skipped)
    return ScoreSummary(
        model_name=model_name,
        model_version=model_version,
        eligible=todo.eligible,
        scored_now=done,
        already_scored=todo.already,
        skipped=todo.skipped,
        skipped_by_reason=dict(sorted(by_reason.items())),
        distribution=dist,
        drift=drifted,
        seconds=time.perf_counter() - t0,
        peak_rss_mb=peak_rss_mb(),
        predictions_path=store.location,
        extras=extras,
        **store.counts(),
    )


def _presence_only(mods: list[str], todo: Plan) -> dict[str, Any]:
    """Presence rates of the eligible rows (no reference: a retrieval model stores none)."""
    n = todo.eligible
    return {"presence": {m: {"current": todo.presence[m] / n if n else float("nan")}
                         for m in mods}}


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
    top_k: int = DEFAULT_TOP_K,
    export: bool = True,
) -> ScoreSummary:
    """Score every eligible patient of a prepared cohort once; resumable and idempotent.

    Writes Parquet parts and ``out/predictions.parquet``, and upserts into PostgreSQL when
    ``db_url`` is given. A retrieval model also gets ``out/embeddings.parquet`` and
    ``out/neighbours.parquet`` (``top_k`` per query and tower pair; ``scoring.retrieval``;
    not with ``export=False``, for a shard of a cohort).
    ``progress(done, total)`` is called after each written batch.
    ``reference`` (``fusion.reference.score_reference``) adds presence/prior differences
    and the PSI of the scores; without it the prior comes from the predictor's config.
    Raises ``ConfigError`` for a wrong folder or spec and ``ScoringError`` when an output
    (part file, PostgreSQL) cannot be written.
    """
    t0 = time.perf_counter()
    prepared = Path(prepared)
    _check_inputs(prepared, predictor, model_version, batch_size)
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1 (got {top_k})")
    store = open_store(Path(out), db_url)
    try:
        summary = score_into(store, prepared, predictor, model_name, model_version,
                             batch_size=batch_size, num_workers=num_workers,
                             progress=progress, reference=reference,
                             exports=Path(out) if export else None, top_k=top_k)
    finally:
        store.close()
    summary.seconds = time.perf_counter() - t0
    return summary
