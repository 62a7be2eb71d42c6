"""The nightly hospital pipeline: index the DICOM drop + notes, ingest what is new, score.

Ingest is content-addressed (only new or changed inputs are computed) and scoring is
exactly-once (only patients/inputs without a prediction from the champion are scored), so
running it every night over the whole drop folder costs what is new. The manifest it
writes (raw patient IDs) stays in the work folder; flow results and logs carry counts only.
The predictions database URL is read by the scoring tasks from the environment variable
``serve.db_url_env`` names (or a Prefect Secret block): it is never a flow parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workflows.runtime import configure_runtime

configure_runtime()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from workflows.config import load_config  # noqa: E402
from workflows.ingest import ingest_flow  # noqa: E402
from workflows.runtime import task_runner  # noqa: E402
from workflows.score import refuse_credentials, score_flow  # noqa: E402


@task(name="index-drop", retries=2, retry_delay_seconds=[10, 60])
def index_drop(drop_dir: str, notes: str | None, manifest: str) -> dict[str, Any]:
    """Scan the drop (headers only) and write the manifest; I/O only, so it may retry."""
    from modalities.dicom_index import index_dicom, write_manifest

    notes_path = Path(notes) if notes and Path(notes).exists() else None
    result = index_dicom(Path(drop_dir), notes_path)
    write_manifest(result, Path(manifest))
    return {"patients": len(result.manifest), "skipped_files": len(result.skipped)}


@flow(name="clinfuse-nightly")
def nightly_flow(
    drop_dir: str | None = None,
    notes: str | None = None,
    workdir: str | None = None,
    config: str = "default",
    overrides: list[str] | None = None,
    model: str | None = None,
    tracking_uri: str | None = None,
    db_url_secret: str | None = None,
) -> dict[str, Any]:
    """Index -> ingest (new only) -> score with the champion -> report (counts only).

    ``db_url_secret`` names a Prefect Secret block holding the predictions database URL;
    without it the URL comes from ``$CLINFUSE_DB_URL`` (``serve.db_url_env``).
    """
    logger = get_run_logger()
    refuse_credentials(tracking_uri, "tracking_uri")
    cfg = load_config(config, overrides)
    folders = cfg.serve.folders()
    drop_dir = drop_dir or folders["drop_dir"]
    notes = notes or folders["notes"]
    work = Path(workdir or folders["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifests" / "nightly.csv"
    indexed = index_drop(drop_dir, notes, str(manifest))
    prepared = work / "prepared"
    dask = cfg.ingest.dask_address  # fan out on the cluster the recipe names, if any
    runner = task_runner(cfg.ingest.workers, dask)
    ingested = ingest_flow.with_options(task_runner=runner)(
        str(manifest), str(prepared), config, overrides, drop_dir
    )
    scored = score_flow.with_options(task_runner=task_runner(2, dask))(
        str(prepared),
        str(work / "predictions"),
        model or cfg.serve.model,
        tracking_uri,
        str(work),
        shards=2 if dask else 1,
        db_url_env=cfg.serve.db_url_env,
        db_url_secret=db_url_secret,
    )
    report = {
        "patients_indexed": indexed["patients"],
        "files_skipped_by_index": indexed["skipped_files"],
        "inputs": ingested["inputs"],
        "inputs_computed": ingested["computed"],
        "inputs_quarantined": ingested["quarantined"],
        "quarantine_reasons": ingested["reasons"],
        "scored_now": scored["scored_now"],
        "already_scored": scored["already_scored"],
        "skipped_by_reason": scored["skipped_by_reason"],
        "model": f"{scored['model_name']} v{scored['model_version']}",
    }
    create_markdown_artifact(
        key="nightly-report",
        markdown="# clinfuse nightly\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in report.items()),
    )
    logger.info(
        "nightly: %d patients, %d inputs computed, %d scored now",
        report["patients_indexed"],
        report["inputs_computed"],
        report["scored_now"],
    )
    return report
