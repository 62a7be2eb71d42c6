"""``clinfuse serve``: serve the nightly and on-demand scoring deployments from this process.

``prefect.serve`` registers the deployments with the Prefect API (``PREFECT_API_URL``) and
runs their flow runs here, on schedule (the nightly cron from config) or on demand
(``prefect deployment run clinfuse-nightly/nightly``). prefect.yaml defines the same
deployments for a process work pool.
"""

from __future__ import annotations

from typing import Any

from workflows.runtime import configure_runtime


def build_deployments(config: str = "default", overrides: list[str] | None = None) -> list[Any]:
    """The deployments ``serve`` runs: ``clinfuse-nightly/nightly`` and ``clinfuse-score/score``.

    The nightly cron runs in ``serve.timezone``; each deployment runs at most
    ``serve.concurrency_limit`` flow runs at once, so a slow night cannot overlap the next
    (``serve.on_overlap``: the late run cancels itself, or waits).
    """
    configure_runtime()
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from workflows.config import load_config
    from workflows.nightly import nightly_flow
    from workflows.score import score_flow

    cfg = load_config(config, overrides)
    folders = cfg.serve.folders()
    limit = ConcurrencyLimitConfig(
        limit=cfg.serve.concurrency_limit,
        collision_strategy=ConcurrencyLimitStrategy(cfg.serve.on_overlap.upper()),
    )
    nightly = nightly_flow.to_deployment(
        name="nightly",
        schedule=Cron(cfg.serve.nightly_cron, timezone=cfg.serve.timezone),
        concurrency_limit=limit,
        parameters={"config": config, "overrides": overrides or [], **folders,
                    "model": cfg.serve.model},
        description="Index the DICOM drop and notes, ingest what is new, score with the "
                    "champion.",
        tags=["clinfuse"],
    )
    score = score_flow.to_deployment(
        name="score",
        parameters={"prepared": f"{folders['workdir']}/prepared",
                    "out": f"{folders['workdir']}/predictions", "model": cfg.serve.model,
                    "workdir": folders["workdir"]},
        description="Score the prepared cohort with a registered model (on demand).",
        tags=["clinfuse"],
        concurrency_limit=cfg.serve.concurrency_limit,
    )
    return [nightly, score]


def serve(config: str = "default", overrides: list[str] | None = None) -> None:
    """Block, serving the deployments (Ctrl-C or SIGTERM stops)."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(config, overrides))
