"""The score flow: champion model x prepared cohort -> exactly-once predictions.

Loads the model by alias (verified: ``registry.model.load_predictor`` runs no stored code),
scores in streaming batches (optionally one shard per Dask worker), writes Parquet (and
PostgreSQL when a database URL is configured), logs a scoring run to MLflow and leaves a
summary table and the MLflow link as Prefect artifacts. A retrieval model's rows hold its
embeddings; the run also writes the embeddings export and the top-k neighbours of the whole
scored cohort (``scoring.retrieval``; the shards of a fanned-out run leave that to the
final whole-cohort pass).

Secrets never travel as flow parameters (Prefect stores and shows those): the database URL
is read where the task runs, from the environment variable ``db_url_env`` names
(``CLINFUSE_DB_URL``) or from a Prefect Secret block named by ``db_url_secret``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workflows.runtime import configure_runtime

configure_runtime()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from workflows.runtime import quiet_user_errors, task_runner  # noqa: E402

quiet_user_errors(console=False)

DEFAULT_MODEL = "models:/clinfuse@champion"
DB_URL_ENV = "CLINFUSE_DB_URL"


def resolve_db_url(db_url_env: str | None, db_url_secret: str | None = None) -> str | None:
    """The predictions database URL: a Prefect Secret block, else ``$db_url_env``, else None.

    Called inside tasks, on whichever machine runs them, so the URL (with its password)
    never becomes a flow or task parameter.
    """
    if db_url_secret:
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(db_url_secret).get())
        except ValueError as exc:  # Prefect: "Unable to find block document named ..."
            from modalities.errors import ConfigError

            raise ConfigError(
                f"Prefect Secret block {db_url_secret!r} not found ({exc}); create it "
                "(prefect block create secret) or use the CLINFUSE_DB_URL variable"
            ) from None
    return (os.environ.get(db_url_env) or None) if db_url_env else None


def refuse_credentials(value: str | None, what: str) -> None:
    """A URL with a password must not become a flow parameter (Prefect shows them)."""
    from urllib.parse import urlsplit

    from modalities.errors import ConfigError

    if value and "://" in value and urlsplit(value).password:
        raise ConfigError(
            f"{what} contains a password; flow parameters are stored and shown by Prefect. "
            "Give credentials through the environment (MLFLOW_TRACKING_USERNAME/PASSWORD, "
            f"{DB_URL_ENV}) instead"
        )


def _no_retry_on_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures, not a refused model or a bad config (retrying cannot fix them)."""
    from modalities.errors import ClinfuseError

    try:
        state.result()
    except ClinfuseError:
        return False
    except Exception:
        return True
    return True


@task(
    name="score-shard",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=_no_retry_on_user_error,
)
def score_shard(
    prepared: str,
    model: str,
    out: str,
    tracking_uri: str | None,
    batch_size: int,
    db_url_env: str | None = DB_URL_ENV,
    db_url_secret: str | None = None,
    top_k: int = 5,
    export: bool = True,
) -> dict[str, Any]:
    """Score one prepared cohort (or shard view); resumable, so a retry finishes the rest.

    ``export=False`` (a shard): no retrieval export, the whole-cohort pass writes it."""
    from registry.model import load_predictor
    from scoring import score_cohort
    from workflows.progress import counter

    predictor, name, version = load_predictor(model, tracking_uri)
    summary = score_cohort(
        Path(prepared),
        predictor,
        Path(out),
        name,
        version,
        batch_size=batch_size,
        db_url=resolve_db_url(db_url_env, db_url_secret),
        reference=predictor.config.get("reference"),
        progress=counter(f"score:{Path(prepared).name}", "score", "patients"),
        top_k=top_k,
        export=export,
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
    tracking_uri: str | None = None,
    workdir: str = ".",
    batch_size: int = 64,
    shards: int = 1,
    db_url_env: str | None = DB_URL_ENV,
    db_url_secret: str | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """Score a prepared cohort with ``model`` (``models:/NAME@ALIAS``); return the summary.

    Predictions also go to PostgreSQL when the Secret block ``db_url_secret`` or the
    environment variable ``db_url_env`` (default ``CLINFUSE_DB_URL``) holds a URL where the
    tasks run; these parameters are names, never the URL. ``top_k``: neighbours per query
    and tower pair for a retrieval model (ignored by classification models).
    """
    from registry.tracking import resolve_tracking_uri

    logger = get_run_logger()
    refuse_credentials(tracking_uri, "tracking_uri")
    tracking_uri = resolve_tracking_uri(tracking_uri, Path(workdir))
    db = {"db_url_env": db_url_env, "db_url_secret": db_url_secret}
    if shards > 1:
        views = make_shards(prepared, shards, str(Path(out) / "shards"))
        futures = [score_shard.submit(v, model, out, tracking_uri, batch_size, **db,
                                      top_k=top_k, export=False) for v in views]
        scored_now = sum(f.result()["scored_now"] for f in futures)
        # One pass over the whole cohort: scores nothing new (all shards are done), merges
        # the parts and computes the cohort-wide summary, skipped list and drift.
        summary = score_shard(prepared, model, out, tracking_uri, batch_size, **db, top_k=top_k)
        summary["already_scored"] -= scored_now
        summary["scored_now"] = scored_now
    else:
        summary = score_shard(prepared, model, out, tracking_uri, batch_size, **db, top_k=top_k)
    run_id, uri = log_scoring(summary, model, prepared, tracking_uri, workdir)
    summary["mlflow_run_id"] = run_id
    skipped = summary.get("skipped_by_reason", {})
    create_table_artifact(
        key="scoring-summary",
        table=[
            {
                "model": f"{summary['model_name']} v{summary['model_version']}",
                "eligible": summary["eligible"],
                "scored now": summary["scored_now"],
                "already scored": summary["already_scored"],
                "skipped": len(summary["skipped"]),
                "positive rate": summary["distribution"].get("positive_rate"),
            }
        ],
        description="Batch scoring counts (pseudonymized cohort; no patient data).",
    )
    create_markdown_artifact(
        key="scoring-mlflow-run",
        markdown=(
            f"Scoring run `{run_id}` in MLflow experiment `clinfuse-scoring` at "
            f"`{_public_uri(uri)}`.\n\nSkipped by reason: {skipped or 'none'}"
        ),
    )
    logger.info(
        "scored %d new patients (%d already scored, %d skipped)",
        summary["scored_now"],
        summary["already_scored"],
        len(summary["skipped"]),
    )
    return summary


def _public_uri(uri: str) -> str:
    """A tracking URI without credentials (safe for artifacts and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password or parts.username:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)


@contextlib.contextmanager
def _env_var(name: str, value: str | None) -> Iterator[None]:
    """Set ``$name`` for a block (processes started meanwhile inherit it), then restore."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def check_model(model: str, tracking_uri: str | None, workdir: Path) -> tuple[str, str]:
    """Resolve and verify the model before any flow starts: ``(name, version)``.

    A missing model or files changed in the artifact store are user-facing errors
    (ConfigError / ModelIntegrityError): one line from the CLI, no flow run left behind.
    """
    import tempfile

    from registry.model import fetch_verified_files
    from registry.tracking import resolve_tracking_uri

    with tempfile.TemporaryDirectory(prefix="clinfuse-check-") as tmp:
        return fetch_verified_files(model, Path(tmp), resolve_tracking_uri(tracking_uri, workdir))


def run_score(
    prepared: Path,
    out: Path,
    model: str = DEFAULT_MODEL,
    db_url: str | None = None,
    workdir: Path = Path("."),
    batch_size: int = 64,
    dask_address: str | None = None,
    shards: int | None = None,
    tracking_uri: str | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """Run the flow; with a Dask address the shards fan out on the cluster.

    ``db_url`` (the CLI's ``--db-url``) reaches the tasks as ``$CLINFUSE_DB_URL`` of this
    process and the workers it starts, never as a flow parameter; a remote Dask cluster's
    workers need the variable in their own environment. Without it, an already set
    ``CLINFUSE_DB_URL`` is used.
    """
    refuse_credentials(tracking_uri, "tracking_uri")
    check_model(model, tracking_uri, workdir)
    n = shards if shards is not None else (2 if dask_address else 1)
    runner = task_runner(max(1, n), dask_address)
    with _env_var(DB_URL_ENV, db_url):
        return score_flow.with_options(task_runner=runner)(
            str(prepared), str(out), model, tracking_uri, str(workdir), batch_size, n,
            top_k=top_k,
        )
