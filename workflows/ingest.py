"""The ingest flow: plan -> per-chunk ingest tasks (parallel) -> write the prepared cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workflows.runtime import configure_runtime

configure_runtime()

from prefect import flow, get_run_logger, task  # noqa: E402

from modalities.cohort import CohortConfig  # noqa: E402
from modalities.ingest import (  # noqa: E402
    PatientOutcome,
    ingest_rows,
    plan_ingest,
    write_prepared,
)
from modalities.pseudonym import Pseudonymizer  # noqa: E402
from workflows.config import load_config  # noqa: E402
from workflows.progress import reporter  # noqa: E402
from workflows.runtime import quiet_user_errors, task_runner  # noqa: E402

quiet_user_errors(console=False)


@task(name="ingest-chunk", retries=1, retry_delay_seconds=2)
def ingest_chunk(
    manifest: str,
    rows: list[int],
    cohort: dict[str, Any],
    root: str,
    out: str,
    duplicate_rows: dict[int, list[int]],
    allow_demo_key: bool,
) -> list[PatientOutcome]:
    """Ingest a chunk of manifest rows (row numbers in, pseudonymized outcomes out)."""
    cfg = CohortConfig.model_validate(cohort)
    return ingest_rows(
        Path(manifest), rows, cfg, Path(root), Path(out), duplicate_rows, allow_demo_key
    )


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
    futures = [
        ingest_chunk.submit(
            str(manifest_path), rows, cohort, str(root), out, plan.duplicate_rows, allow_demo_key
        )
        for rows in plan.chunks
    ]
    _show_progress(futures, manifest_path, cfg.cohort)
    outcomes = [o for f in futures for o in f.result()]
    summary = write_prepared_task(out, outcomes, cohort, key_id)
    logger.info(
        "ingest done: %d inputs, %d accepted, %d quarantined (%d computed, %d cached)",
        summary["inputs"], summary["accepted"], summary["quarantined"],
        summary["computed"], summary["cached"],
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
        str(manifest), str(out), config, overrides, str(data_root) if data_root else None,
        allow_demo_key,
    )
