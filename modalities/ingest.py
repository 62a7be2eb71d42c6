"""Ingest domain logic: manifest rows -> cached, validated, pseudonymized inputs.

``plan_ingest`` splits the manifest into chunks of row numbers (what Prefect tasks pass
around: no patient data), ``ingest_rows`` processes one chunk, and ``write_prepared``
writes ``cohort.parquet`` and ``quarantine.parquet`` atomically. Every non-empty modality
cell of the manifest ends as exactly one accepted or one quarantined input.

No input can stop the run: a bad input raises ``InputRejected``, and any other exception
while reading one input (a reader bug, a library crash) becomes an ``INTERNAL_ERROR``
quarantine row naming only the exception type, never its message (which may quote a path
or a header value). Timeouts are the flow's job (``workflows/ingest.py``): it re-runs a
timed-out chunk input by input and passes what hung here as ``rejected``.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from modalities.base import Modality
from modalities.cache import TensorCache, atomic_write
from modalities.cohort import (
    CohortConfig,
    LabelParser,
    check_manifest_columns,
    parse_split,
    read_manifest,
)
from modalities.cohort_table import (
    QUARANTINE_COLUMNS,
    STATUS_MISSING,
    STATUS_OK,
    STATUS_QUARANTINED,
    CohortTable,
)
from modalities.errors import InputRejected, ReasonCode
from modalities.paths import SeriesRef, safe_reference, stat_fingerprint
from modalities.pseudonym import Pseudonymizer

log = logging.getLogger("clinfuse.ingest")



@dataclass
class PatientOutcome:
    """What one manifest row became; holds pseudonyms and reason codes only."""

    row: dict[str, Any]
    quarantine: list[dict[str, str]] = field(default_factory=list)
    inputs: int = 0
    computed: int = 0  # inputs preprocessed this run (cache misses)


@dataclass
class IngestPlan:
    """Row-number chunks plus the rows whose patient ID appears more than once."""

    chunks: list[list[int]]
    duplicate_rows: dict[int, list[int]]  # row -> all rows sharing its patient ID
    rows: int


@lru_cache(maxsize=4)
def _manifest(path: str, mtime_ns: int) -> pd.DataFrame:
    return read_manifest(Path(path))


def load_manifest(path: Path) -> pd.DataFrame:
    """Read the manifest once per process (keyed by mtime, so edits are seen)."""
    path = Path(path).resolve()
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:  # read_manifest says what is wrong (missing, not a file)
        mtime_ns = -1
    return _manifest(str(path), mtime_ns)


def plan_ingest(manifest: Path, cfg: CohortConfig, chunk_size: int = 4) -> IngestPlan:
    """Validate the manifest's columns and cut its rows into chunks for parallel tasks."""
    df = load_manifest(manifest)
    check_manifest_columns(df, cfg, manifest)
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(df[cfg.id_column]):
        groups.setdefault(pid, []).append(i)
    dups = {i: rows for rows in groups.values() if len(rows) > 1 for i in rows}
    n = len(df)
    chunks = [list(range(s, min(s + chunk_size, n))) for s in range(0, n, max(1, chunk_size))]
    return IngestPlan(chunks=chunks, duplicate_rows=dups, rows=n)


def _content_hash(mod: Modality, source: Path | SeriesRef | str, cache: TensorCache) -> str:
    """Hash an input's content, memoized by its files' stat fingerprint (cheap re-runs)."""
    if isinstance(source, str):  # inline text: hashing is as cheap as a memo lookup
        return mod.content_hash(source)
    fp = stat_fingerprint(source, salt=mod.name)
    cached = cache.memo_get(fp)
    if cached is None:
        cached = mod.content_hash(source)
        cache.memo_put(fp, cached)
    return cached


def ingest_input(
    mod: Modality, value: str, root: Path, cache: TensorCache, ref: str
) -> tuple[str, bool]:
    """Resolve, hash, load, validate and preprocess one input into the cache.

    Returns ``(cache_key, computed)``; raises ``InputRejected`` naming ``ref``. A rejection
    is cached under the content key, so unchanged bad files are not re-read either.
    """
    try:
        source = mod.resolve(value, root, ref)
        key = mod.cache_key(_content_hash(mod, source, cache))
        if cache.has(mod.name, key):
            return key, False
        rejected = cache.get_rejection(mod.name, key)
        if rejected is not None:
            raise rejected
        try:
            cache.put(mod.name, key, mod.preprocess(mod.load(source)))
        except InputRejected as err:
            cache.put_rejection(mod.name, key, err)
            raise
        return key, True
    except InputRejected as err:
        raise err.with_source(ref) from None
    except OSError as err:  # permission denied, vanished file, I/O error
        raise InputRejected(
            ReasonCode.UNREADABLE,
            f"could not read the input ({type(err).__name__}); check permissions and storage",
            ref,
        ) from None


def internal_error(err: Exception, ref: str) -> InputRejected:
    """An unexpected exception as a quarantine reason: its type and code location only.

    The exception's message is left out (it may quote a path, a header value or note
    text); the innermost frame of the traceback (file and line of clinfuse or library
    code) is logged so the bug can be found.
    """
    frames = traceback.extract_tb(err.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    log.warning("internal error on %s: %s at %s", ref, type(err).__name__, where)
    return InputRejected(
        ReasonCode.INTERNAL_ERROR,
        f"unexpected {type(err).__name__} while reading this input (a clinfuse bug: report "
        "it with the reason code); the rest of the run was not affected",
        ref,
    )


def ingest_patient(
    row_no: int,
    row: pd.Series,
    cfg: CohortConfig,
    mods: dict[str, Modality],
    root: Path,
    cache: TensorCache,
    pseudo: Pseudonymizer,
    duplicates: list[int] | None = None,
    rejected: dict[str, InputRejected] | None = None,
    *,
    labels: LabelParser,
) -> PatientOutcome:
    """Process one manifest row: labels, split, then every modality cell independently.

    ``labels`` is the cohort's task (``fusion.tasks.cohort_task``): it owns the label rules.

    ``rejected`` maps modalities to a rejection decided beforehand (an input that timed
    out): those cells are quarantined without being read again.
    """
    patient = pseudo(row[cfg.id_column])
    cells = {m: row.get(cfg.column(m), "") for m in sorted(mods)}
    given = [m for m, v in cells.items() if v != ""]
    out = PatientOutcome(row={"patient": patient}, inputs=len(given))
    rejected = rejected or {}

    def quarantine(m: str, err: InputRejected) -> None:
        out.quarantine.append(
            {
                "patient": patient,
                "modality": m,
                "source": err.source or safe_reference(row_no, cfg.column(m)),
                "code": str(err.code),
                "message": err.message,
            }
        )

    # Patient-level problems reject every input of the row (counts still reconcile).
    try:
        if duplicates:
            others = [r for r in duplicates if r != row_no]
            raise InputRejected(
                ReasonCode.DUPLICATE_PATIENT,
                f"the same patient ID is on manifest rows {sorted([row_no, *others])}; keep one "
                "row per patient (merge the inputs) and re-run",
            )
        values = labels.parse_labels(row, cfg)
        split = parse_split(row, cfg)
    except Exception as exc:  # InputRejected, or a bug in parsing: the row, not the run
        for m in given:
            ref = safe_reference(row_no, cfg.column(m))
            err = exc if isinstance(exc, InputRejected) else internal_error(exc, ref)
            quarantine(m, err.with_source(ref))
        return out  # out.row stays minimal: the patient is not in the cohort
    out.row.update(_label_columns(values, cfg), split=split, excluded=False)

    for m in sorted(mods):
        if cells[m] == "":
            _set_status(out.row, m, STATUS_MISSING, None)
            continue
        ref = safe_reference(row_no, cfg.column(m))
        try:
            if m in rejected:
                raise rejected[m].with_source(ref)
            key, computed = ingest_input(mods[m], cells[m], root, cache, ref)
            _set_status(out.row, m, STATUS_OK, key)
            out.computed += computed
        except Exception as exc:  # one input's failure never stops the row or the run
            err = exc if isinstance(exc, InputRejected) else internal_error(exc, ref)
            _set_status(out.row, m, STATUS_QUARANTINED, None)
            quarantine(m, err)
    statuses = [out.row[CohortTable.status_column(m)] for m in mods]
    required_missing = any(
        cfg.modalities[m].required and out.row[CohortTable.status_column(m)] != STATUS_OK
        for m in mods
    )
    out.row["excluded"] = (
        required_missing
        or STATUS_OK not in statuses
        or (cfg.on_bad_input == "drop_patient" and STATUS_QUARANTINED in statuses)
    )
    return out


def _set_status(row: dict[str, Any], m: str, status: str, key: str | None) -> None:
    row[CohortTable.status_column(m)], row[CohortTable.key_column(m)] = status, key


def _label_columns(labels: list[float] | None, cfg: CohortConfig) -> dict[str, float | None]:
    if labels is None:
        return dict.fromkeys(cfg.labels)
    return dict(zip(cfg.labels, labels, strict=True))


def ingest_rows(
    manifest: Path,
    rows: list[int],
    cfg: CohortConfig,
    root: Path,
    out_dir: Path,
    duplicate_rows: dict[int, list[int]],
    allow_demo_key: bool = False,
    only: str | None = None,
    rejected: dict[int, dict[str, tuple[str, str]]] | None = None,
    *,
    labels: LabelParser,
) -> list[PatientOutcome]:
    """Process a chunk of manifest rows (one Prefect task); never raises for bad input.

    ``labels`` parses the label cells (the cohort's task, see ``ingest_patient``). ``only``
    restricts the work to one modality (the flow probes a timed-out chunk input by input);
    ``rejected`` maps row -> modality -> ``(code, message)`` decided beforehand.
    """
    df = load_manifest(manifest)
    mods = cfg.build()
    if only is not None:
        mods = {only: mods[only]}
    cache = TensorCache(Path(out_dir) / "cache")
    pseudo = Pseudonymizer.from_env(allow_demo=allow_demo_key)
    decided = {
        i: {m: InputRejected(code, msg) for m, (code, msg) in per_row.items()}
        for i, per_row in (rejected or {}).items()
    }
    return [
        ingest_patient(
            i,
            df.iloc[i],
            cfg,
            mods,
            Path(root),
            cache,
            pseudo,
            duplicate_rows.get(i),
            decided.get(i),
            labels=labels,
        )
        for i in rows
    ]


def given_modalities(manifest: Path, row: int, cfg: CohortConfig) -> list[str]:
    """The modalities whose cell is filled on manifest row ``row`` (names, no values)."""
    r = load_manifest(manifest).iloc[row]
    return [m for m in sorted(cfg.modalities) if r.get(cfg.column(m), "") != ""]


def summarize(outcomes: list[PatientOutcome]) -> dict[str, Any]:
    """``{"inputs", "accepted", "quarantined", "reasons", ...}`` over all outcomes."""
    inputs = sum(o.inputs for o in outcomes)
    quarantined = sum(len(o.quarantine) for o in outcomes)
    reasons = Counter(q["code"] for o in outcomes for q in o.quarantine)
    return {
        "inputs": inputs,
        "accepted": inputs - quarantined,
        "quarantined": quarantined,
        "reasons": dict(sorted(reasons.items())),
        "patients": sum(1 for o in outcomes if "excluded" in o.row),
        "computed": sum(o.computed for o in outcomes),
        "cached": inputs - quarantined - sum(o.computed for o in outcomes),
    }


def write_prepared(
    out_dir: Path, outcomes: list[PatientOutcome], cfg: CohortConfig, key_id: str
) -> dict[str, Any]:
    """Write cohort.parquet, quarantine.parquet and prepared.json atomically; return summary."""
    out_dir = Path(out_dir)
    mods = sorted(cfg.modalities)
    table = CohortTable.of(mods, cfg.labels)
    cohort = table.frame([o.row for o in outcomes if "excluded" in o.row])
    quarantine = pd.DataFrame(
        [q for o in outcomes for q in o.quarantine], columns=QUARANTINE_COLUMNS
    ).astype("string")
    built = cfg.build()
    meta = {
        "format": 1,
        "cohort": cfg.model_dump(mode="json"),
        "spec_hashes": {m: built[m].spec_hash() for m in mods},
        "pseudonym_key_id": key_id,
        "summary": summarize(outcomes),
    }
    atomic_write(out_dir / "cohort.parquet", lambda p: cohort.to_parquet(p, index=False))
    atomic_write(out_dir / "quarantine.parquet", lambda p: quarantine.to_parquet(p, index=False))
    atomic_write(out_dir / "prepared.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    return meta["summary"]


def ingest_manifest(
    manifest: Path,
    cfg: CohortConfig,
    root: Path,
    out_dir: Path,
    chunk_size: int = 16,
    allow_demo_key: bool = False,
    *,
    labels: LabelParser,
) -> dict[str, Any]:
    """The whole ingest in this process, no Prefect (tests, benchmarks, notebooks).

    Same result as the flow: plan, every chunk, then ``write_prepared``; returns the summary.
    ``labels``: the cohort's task, e.g. ``fusion.tasks.cohort_task(cfg)``.
    """
    plan = plan_ingest(Path(manifest), cfg, chunk_size)
    outcomes = [
        o
        for rows in plan.chunks
        for o in ingest_rows(
            Path(manifest),
            rows,
            cfg,
            Path(root),
            Path(out_dir),
            plan.duplicate_rows,
            allow_demo_key,
            labels=labels,
        )
    ]
    key_id = Pseudonymizer.from_env(allow_demo=allow_demo_key).key_id
    return write_prepared(Path(out_dir), outcomes, cfg, key_id)
