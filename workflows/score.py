"""The score flow: champion model x prepared cohort -> exactly-once predictions.

Loads the model by alias, scores in streaming batches (optionally one shard per Dask
worker), writes Parquet (and PostgreSQL with ``db_url``), logs a scoring run to MLflow and
leaves a summary table and the MLflow link as Prefect artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workflows.runtime import configure_runtime

configure_runtime()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from workflows.runtime import quiet_user_errors, task_runner  # noqa: E402

quiet_user_errors(console=False)

DEFAULT_MODEL = "models:/clinfuse@champion"


@task(name="score-shard", retries=1, retry_delay_seconds=10)
def score_shard(
    prepared: str, model: str, out: str, db_url: str | None, tracking_uri: str | None,
    batch_size: int,
) -> dict[str, Any]:
    """Score one prepared cohort (or shard view); resumable, so a retry finishes the rest."""
    from fusion.scoring import score_cohort
    from registry.model import load_predictor
    from workflows.progress import counter

    predictor, name, version = load_predictor(model, tracking_uri)
    summary = score_cohort(
        Path(prepared), predictor, Path(out), name, version, batch_size=batch_size,
        db_url=db_url, reference=predictor.config.get("reference"),
        progress=counter(f"score:{Path(prepared).name}", "score", "patients"),
    )
    return summary.to_dict()


@task(name="make-shards")
def make_shards(prepared: str, shards: int, dest: str) -> list[str]:
    from fusion.sharding import make_shard_views

    return [str(p) for p in make_shard_views(Path(prepared), shards, Path(dest))]


@task(name="log-scoring-run", retries=2, retry_delay_seconds=5)
def log_scoring(
    summary: dict[str, Any], model: str, prepared: str, tracking_uri: str | None, workdir: str
) -> tuple[str | None, str]:
    from registry.scoring import log_scoring_run

    return log_scoring_run(summary, model, Path(prepared), tracking_uri, Path(workdir))


@flow(name="clinfuse-score")
def score_flow(
    prepared: str,
    out: str,
    model: str = DEFAULT_MODEL,
    db_url: str | None = None,
    tracking_uri: str | None = None,
    workdir: str = ".",
    batch_size: int = 64,
    shards: int = 1,
) -> dict[str, Any]:
    """Score a prepared cohort with ``model`` (``models:/NAME@ALIAS``); return the summary."""
    from registry.tracking import resolve_tracking_uri

    logger = get_run_logger()
    tracking_uri = resolve_tracking_uri(tracking_uri, Path(workdir))
    if shards > 1:
        views = make_shards(prepared, shards, str(Path(out) / "shards"))
        futures = [score_shard.submit(v, model, out, db_url, tracking_uri, batch_size)
                   for v in views]
        scored_now = sum(f.result()["scored_now"] for f in futures)
        # One pass over the whole cohort: scores nothing new (all shards are done), merges
        # the parts and computes the cohort-wide summary, skipped list and drift.
        summary = score_shard(prepared, model, out, db_url, tracking_uri, batch_size)
        summary["already_scored"] -= scored_now
        summary["scored_now"] = scored_now
    else:
        summary = score_shard(prepared, model, out, db_url, tracking_uri, batch_size)
    run_id, uri = log_scoring(summary, model, prepared, tracking_uri, workdir)
    summary["mlflow_run_id"] = run_id
    skipped = summary.get("skipped_by_reason", {})
    create_table_artifact(
        key="scoring-summary",
        table=[{"model": f"{summary['model_name']} v{summary['model_version']}",
                "eligible": summary["eligible"], "scored now": summary["scored_now"],
                "already scored": summary["already_scored"],
                "skipped": len(summary["skipped"]),
                "positive rate": summary["distribution"].get("positive_rate")}],
        description="Batch scoring counts (pseudonymized cohort; no patient data).",
    )
    create_markdown_artifact(
        key="scoring-mlflow-run",
        markdown=(f"Scoring run `{run_id}` in MLflow experiment `clinfuse-scoring` at "
                  f"`{_public_uri(uri)}`.\n\nSkipped by reason: {skipped or 'none'}"),
    )
    logger.info("scored %d new patients (%d already scored, %d skipped)",
                summary["scored_now"], summary["already_scored"], len(summary["skipped"]))
    return summary


def _public_uri(uri: str) -> str:
    """A tracking URI without credentials (safe for artifacts and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password or parts.username:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)


def run_score(
    prepared: Path, out: Path, model: str = DEFAULT_MODEL, db_url: str | None = None,
    workdir: Path = Path("."), batch_size: int = 64, dask_address: str | None = None,
    shards: int | None = None, tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Run the flow; with a Dask address the shards fan out on the cluster."""
    n = shards if shards is not None else (2 if dask_address else 1)
    runner = task_runner(max(1, n), dask_address)
    return score_flow.with_options(task_runner=runner)(
        str(prepared), str(out), model, db_url, tracking_uri, str(workdir), batch_size, n
    )
