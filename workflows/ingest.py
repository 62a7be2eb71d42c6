"""The ingest flow: plan -> per-chunk ingest tasks (parallel) -> write the prepared cohort.

Every ingest task runs under ``ingest.task_timeout_s``. A chunk that times out (or whose
task fails for any reason) is re-run input by input: each of its inputs gets its own task,
the inputs that time out again are quarantined as ``TIMEOUT`` (other failures as
``INTERNAL_ERROR``), and the chunk's rows are then rebuilt with those inputs pre-rejected
(the rest are cache hits by then). The timeout interrupts Python code only; reads that
could block in the kernel (FIFOs, devices) are refused before any open, so they never
reach it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workflows.runtime import configure_runtime

configure_runtime()

from prefect import flow, get_run_logger, task  # noqa: E402

from fusion.tasks import cohort_task  # noqa: E402
from modalities.cohort import CohortConfig  # noqa: E402
from modalities.errors import ReasonCode  # noqa: E402
from modalities.ingest import (  # noqa: E402
    PatientOutcome,
    given_modalities,
    ingest_rows,
    plan_ingest,
    write_prepared,
)
from modalities.pseudonym import Pseudonymizer  # noqa: E402
from workflows.config import load_config  # noqa: E402
from workflows.progress import reporter  # noqa: E402
from workflows.runtime import quiet_user_errors, task_runner  # noqa: E402

quiet_user_errors(console=False)


def _not_a_timeout(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (I/O) once, never a timeout: it would only hang again."""
    return not isinstance(getattr(state, "data", None), TimeoutError)


@task(name="ingest-chunk", retries=1, retry_delay_seconds=2, retry_condition_fn=_not_a_timeout)
def ingest_chunk(
    manifest: str,
    rows: list[int],
    cohort: dict[str, Any],
    root: str,
    out: str,
    duplicate_rows: dict[int, list[int]],
    allow_demo_key: bool,
    only: str | None = None,
    rejected: dict[int, dict[str, tuple[str, str]]] | None = None,
) -> list[PatientOutcome]:
    """Ingest a chunk of manifest rows (row numbers in, pseudonymized outcomes out)."""
    cfg = CohortConfig.model_validate(cohort)
    return ingest_rows(
        Path(manifest),
        rows,
        cfg,
        Path(root),
        Path(out),
        duplicate_rows,
        allow_demo_key,
        only,
        rejected,
        labels=cohort_task(cfg),  # the task owns the label rules (modalities cannot import it)
    )


def _reason(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    """Quarantine code and message for an input whose task failed (type name only)."""
    if isinstance(exc, TimeoutError):
        return str(ReasonCode.TIMEOUT), (
            f"reading this input took longer than ingest.task_timeout_s={timeout_s:g} s; "
            "check the file (a huge or damaged export?) or raise the timeout"
        )
    return str(ReasonCode.INTERNAL_ERROR), (
        f"the ingest task for this input failed ({type(exc).__name__}); report it with the "
        "reason code, the rest of the run was not affected"
    )


Rejections = dict[int, dict[str, tuple[str, str]]]  # row -> modality -> (code, message)


class _Chunks:
    """Submits ingest tasks for row lists; the fallback runs one in this process."""

    def __init__(self, fixed: tuple[Any, ...], cohort: CohortConfig, timeout_s: float) -> None:
        self.fixed, self.cohort, self.timeout_s = fixed, cohort, timeout_s
        self.task = ingest_chunk.with_options(timeout_seconds=timeout_s)

    def submit(self, rows: list[int], **kw: Any) -> Any:
        m, c, r, o, d, a = self.fixed
        return self.task.submit(m, rows, c, r, o, d, a, **kw)

    def result(self, future: Any) -> list[PatientOutcome]:
        # Bounded wait: even a task the timeout cannot interrupt does not stall the flow.
        return future.result(timeout=self.timeout_s * 3)

    def unread(self, row: int, reason: tuple[str, str]) -> list[PatientOutcome]:
        """The row with every input rejected for ``reason``, computed here, reading nothing."""
        m, _, r, o, d, a = self.fixed
        rejected = {row: dict.fromkeys(given_modalities(Path(m), row, self.cohort), reason)}
        return ingest_rows(Path(m), [row], self.cohort, Path(r), Path(o), d, a, rejected=rejected,
                           labels=cohort_task(self.cohort))


def _isolate(
    rows: list[int], chunk_error: BaseException, chunks: _Chunks, logger: Any
) -> dict[int, PatientOutcome]:
    """Re-run failed chunks' rows input by input; what fails again is quarantined."""
    manifest = Path(chunks.fixed[0])
    probes = [(r, m) for r in rows for m in given_modalities(manifest, r, chunks.cohort)]
    bad: Rejections = {}
    if len(probes) == 1:  # one input only: the chunk's failure was that input's
        r, m = probes[0]
        bad[r] = {m: _reason(chunk_error, chunks.timeout_s)}
    else:
        futures = [(r, m, chunks.submit([r], only=m)) for r, m in probes]
        for r, m, f in futures:
            try:
                chunks.result(f)
            except Exception as exc:
                bad.setdefault(r, {})[m] = _reason(exc, chunks.timeout_s)
    logger.warning(
        "ingest: %d input(s) of %d re-run row(s) quarantined after a failed task",
        sum(len(v) for v in bad.values()),
        len(rows),
    )
    out: dict[int, PatientOutcome] = {}
    finals = [(r, chunks.submit([r], rejected={r: bad.get(r, {})})) for r in rows]
    for r, f in finals:
        try:
            (out[r],) = chunks.result(f)
        except Exception as exc:  # last resort: reject every input of the row unread
            (out[r],) = chunks.unread(r, _reason(exc, chunks.timeout_s))
    return out


@task(name="write-prepared")
def write_prepared_task(
    out: str, outcomes: list[PatientOutcome], cohort: dict[str, Any], key_id: str
) -> dict[str, Any]:
    """Write cohort.parquet / quarantine.parquet / prepared.json."""
    return write_prepared(Path(out), outcomes, CohortConfig.model_validate(cohort), key_id)


@flow(name="clinfuse-ingest", log_prints=False)
def ingest_flow(
    manifest: str,
    out: str,
    config: str = "default",
    overrides: list[str] | None = None,
    data_root: str | None = None,
    allow_demo_key: bool = False,
) -> dict[str, Any]:
    """Validate, preprocess and cache every input of a manifest; return the summary."""
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    key_id = Pseudonymizer.from_env(allow_demo=allow_demo_key).key_id  # fail fast if unset
    manifest_path = Path(manifest).resolve()
    root = Path(data_root).resolve() if data_root else manifest_path.parent
    Path(out).mkdir(parents=True, exist_ok=True)
    plan = plan_ingest(manifest_path, cfg.cohort, cfg.ingest.chunk_size)
    cohort = cfg.cohort.model_dump(mode="json")
    logger.info("ingesting %d manifest rows in %d chunks", plan.rows, len(plan.chunks))
    chunks = _Chunks(
        (str(manifest_path), cohort, str(root), out, plan.duplicate_rows, allow_demo_key),
        cfg.cohort,
        cfg.ingest.task_timeout_s,
    )
    futures = [(rows, chunks.submit(rows)) for rows in plan.chunks]
    _show_progress([f for _, f in futures], manifest_path, cfg.cohort)
    by_row: dict[int, PatientOutcome] = {}
    for rows, f in futures:
        try:
            by_row.update(zip(rows, chunks.result(f), strict=True))
        except Exception as exc:  # timeout or crash: find the input(s) responsible
            logger.warning(
                "ingest: a chunk of %d rows failed (%s); re-running it input by input",
                len(rows),
                type(exc).__name__,
            )
            by_row.update(_isolate(rows, exc, chunks, logger))
    outcomes = [by_row[r] for r in range(plan.rows)]
    writer = write_prepared_task.with_options(timeout_seconds=cfg.ingest.task_timeout_s)
    summary = writer(out, outcomes, cohort, key_id)
    logger.info(
        "ingest done: %d inputs, %d accepted, %d quarantined (%d computed, %d cached)",
        summary["inputs"],
        summary["accepted"],
        summary["quarantined"],
        summary["computed"],
        summary["cached"],
    )
    return summary


def _show_progress(futures: list[Any], manifest: Path, cohort: CohortConfig) -> None:
    """Advance the CLI's ingest bar by each chunk's inputs as chunks finish (no-op otherwise)."""
    from prefect.futures import as_completed

    from modalities.ingest import load_manifest
    from workflows.progress import Reporter

    rep = reporter()
    if type(rep) is Reporter:
        return
    df = load_manifest(manifest)  # cached per process: planning read it already
    total = int(sum((df[cohort.column(m)] != "").sum() for m in cohort.modalities))
    rep.start("ingest", "ingest", total)
    done = 0
    for f in as_completed(futures):
        try:
            done += sum(o.inputs for o in f.result())
        except Exception:  # a failed chunk: the result() below raises it
            continue
        rep.update("ingest", completed=done, info="inputs")
    rep.finish("ingest", info=f"{done} inputs")


def run_ingest(
    manifest: Path,
    out: Path,
    config: str = "default",
    overrides: list[str] | None = None,
    data_root: Path | None = None,
    dask_address: str | None = None,
    allow_demo_key: bool = False,
) -> dict[str, Any]:
    """Run the flow with the task runner the config (or ``dask_address``) asks for.

    User errors (config, key, manifest columns) are checked here first, so they surface as
    one clear message instead of a failed flow run with a traceback.
    """
    cfg = load_config(config, overrides)
    Pseudonymizer.from_env(allow_demo=allow_demo_key)
    plan_ingest(Path(manifest).resolve(), cfg.cohort, cfg.ingest.chunk_size)
    runner = task_runner(cfg.ingest.workers, dask_address or cfg.ingest.dask_address)
    return ingest_flow.with_options(task_runner=runner)(
        str(manifest),
        str(out),
        config,
        overrides,
        str(data_root) if data_root else None,
        allow_demo_key,
    )
