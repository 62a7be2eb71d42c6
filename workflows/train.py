"""The train flow: every requested variant (+ unimodal baselines) in one MLflow experiment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from workflows.runtime import configure_runtime

configure_runtime()

from prefect import flow, get_run_logger, task  # noqa: E402

from workflows.config import load_config  # noqa: E402
from workflows.runtime import quiet_user_errors  # noqa: E402

quiet_user_errors(console=False)


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
    from fusion.train import monitored
    from registry.experiment import run_experiment
    from workflows.progress import epoch_callback

    cfg = load_config(config, overrides)
    return run_experiment(
        Path(prepared), cfg.cohort, cfg.model, cfg.train, cfg.model_dump(mode="json"),
        fusions, baselines, experiment, register_as, tracking_uri, Path(workdir),
        on_epoch=epoch_callback(cfg.train.max_epochs, monitored(cfg.train, cfg.cohort.task)),
    )


@task(name="train-variant-ddp")
def train_variant_ddp(
    prepared: str, resolved_yaml: str, fusion: str, modalities: list[str], nproc: int, out: str
) -> str:
    """One variant under ``torchrun`` (DDP, one process per GPU; gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "fusion.distributed", "--prepared", prepared,
           "--config", resolved_yaml, "--fusion", fusion, "--modalities", ",".join(modalities),
           "--out", out]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"torchrun exited with {res.returncode}:\n{res.stderr[-3000:]}")
    return out


@task(name="log-ddp-experiment")
def log_ddp_experiment(
    run_dirs: list[str], prepared: str, resolved: dict[str, Any], experiment: str,
    register_as: str | None, tracking_uri: str | None, workdir: str,
) -> dict[str, Any]:
    from registry.experiment import log_external_variants

    return log_external_variants([Path(d) for d in run_dirs], Path(prepared), resolved,
                                 experiment, register_as, tracking_uri, Path(workdir))


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
    ddp: int = 0,
) -> dict[str, Any]:
    """Train, evaluate and log fusion variants and baselines; return a summary (no PHI).

    ``ddp=N`` trains each variant under torchrun with N processes (DDP) and logs the results
    from this process; MLflow is never used inside the training processes.
    """
    cfg = load_config(config, overrides)  # fail fast on a bad config, before any run starts
    names = fusions if fusions is not None else [cfg.model.fusion.name]
    if ddp > 0:
        from fusion.data import PreparedCohort
        from fusion.experiment import plan_variants

        resolved = cfg.model_dump(mode="json")
        run_root = Path(workdir) / "ddp-runs"
        run_root.mkdir(parents=True, exist_ok=True)
        resolved_yaml = run_root / "resolved.yaml"
        resolved_yaml.write_text(yaml.safe_dump(resolved))
        mods = sorted(PreparedCohort(Path(prepared), cfg.cohort).mods)
        dirs = [
            train_variant_ddp(prepared, str(resolved_yaml), v.fusion, list(v.modalities), ddp,
                              str(run_root / v.name))
            for v in plan_variants(mods, names, baselines)
        ]
        return log_ddp_experiment(dirs, prepared, resolved, experiment, register_as,
                                  tracking_uri, workdir)
    summary = train_experiment_task(
        prepared, config, overrides or [], names, baselines, experiment, register_as,
        tracking_uri, workdir,
    )
    get_run_logger().info(
        "trained %d variants in experiment %r", len(summary["variants"]), experiment
    )
    return summary
