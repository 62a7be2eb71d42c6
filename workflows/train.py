"""The train flow: every requested variant (+ unimodal baselines) in one MLflow experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workflows.runtime import configure_runtime

configure_runtime()

from prefect import flow, get_run_logger, task  # noqa: E402

from workflows.config import load_config  # noqa: E402


@task(name="train-experiment")
def train_experiment_task(
    prepared: str,
    config: str,
    overrides: list[str],
    fusions: list[str],
    baselines: bool,
    experiment: str,
    register_as: str | None,
    tracking_uri: str | None,
    workdir: str,
) -> dict[str, Any]:
    """Train all variants on one split (domain: ``registry.experiment.run_experiment``)."""
    from registry.experiment import run_experiment

    cfg = load_config(config, overrides)
    return run_experiment(
        Path(prepared), cfg.cohort, cfg.model, cfg.train, cfg.model_dump(mode="json"),
        fusions, baselines, experiment, register_as, tracking_uri, Path(workdir),
    )


@flow(name="clinfuse-train")
def train_flow(
    prepared: str,
    config: str = "default",
    overrides: list[str] | None = None,
    fusions: list[str] | None = None,
    baselines: bool = False,
    experiment: str = "clinfuse",
    register_as: str | None = None,
    tracking_uri: str | None = None,
    workdir: str = ".",
) -> dict[str, Any]:
    """Train, evaluate and log fusion variants and baselines; return a summary (no PHI)."""
    cfg = load_config(config, overrides)  # fail fast on a bad config, before any run starts
    names = fusions if fusions is not None else [cfg.model.fusion.name]
    summary = train_experiment_task(
        prepared, config, overrides or [], names, baselines, experiment, register_as,
        tracking_uri, workdir,
    )
    get_run_logger().info(
        "trained %d variants in experiment %r", len(summary["variants"]), experiment
    )
    return summary
