"""The train flow: one Prefect task per variant, one MLflow experiment.

``open-experiment`` plans the variants and starts the parent run; then, per variant,
``train-<variant>`` trains it into a run folder (in this process, or under torchrun with
``ddp=N``) and ``log-<variant>`` logs that folder as a child run; ``close-experiment``
writes the variants table and gives ``challenger`` to the best registered variant. A
variant that fails is a failed task in Prefect and a line in the summary's ``failed``; the
others still train, are logged and compared, and the flow then fails with
``VariantsFailed`` (which carries the summary). Tasks pass paths and IDs, never tensors.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from workflows.runtime import configure_runtime

configure_runtime()

from prefect import flow, get_run_logger, task  # noqa: E402

from workflows.config import load_config  # noqa: E402
from workflows.runtime import quiet_user_errors  # noqa: E402

quiet_user_errors(console=False)

RUNS_DIR = "runs"
RESOLVED_FILE = "resolved.yaml"


class VariantsFailed(Exception):
    """Some variants failed; the others were trained, logged and compared (``summary``).

    Each failed task logged its own traceback; this one is logged as one line.
    """

    one_line = True

    def __init__(self, summary: dict[str, Any]) -> None:
        failed = summary.get("failed") or {}
        super().__init__(f"{len(failed)} of {len(failed) + len(summary['variants'])} variants "
                         f"failed: {', '.join(sorted(failed))}")
        self.summary = summary


@task(name="open-experiment")
def open_experiment_task(
    prepared: str, resolved_yaml: str, fusions: list[str], baselines: bool, experiment: str,
    tracking_uri: str | None, workdir: str, ddp: int,
) -> dict[str, Any]:
    """Plan the variants, start the parent run (``registry.experiment.open_experiment``)."""
    from registry.experiment import open_experiment

    cfg = load_config(resolved_yaml)
    return open_experiment(Path(prepared), cfg.cohort, cfg.train, cfg.model_dump(mode="json"),
                           fusions, baselines, experiment, tracking_uri, Path(workdir), ddp)


@task(name="train-variant", task_run_name="train-{name}")
def train_variant_task(
    name: str, prepared: str, resolved_yaml: str, fusion: str, modalities: list[str], out: str,
) -> str:
    """Train one variant in this process into run folder ``out``
    (``fusion.run_folder.train_to_folder``); returns ``out``."""
    from fusion.run_folder import train_to_folder
    from fusion.train import monitored
    from workflows.progress import epoch_callback

    cfg = load_config(resolved_yaml)
    progress = epoch_callback(cfg.train.max_epochs, monitored(cfg.train, cfg.cohort.task))
    train_to_folder(Path(prepared), cfg.cohort, cfg.model, cfg.train, fusion, modalities,
                    Path(out), on_epoch=lambda e, m: progress(name, e, m))
    return out


@task(name="train-variant-ddp", task_run_name="train-{name}-ddp")
def train_variant_ddp_task(
    name: str, prepared: str, resolved_yaml: str, fusion: str, modalities: list[str], out: str,
    nproc: int,
) -> str:
    """Train one variant under ``torchrun`` (``workflows.train_worker``, one process per GPU;
    gloo on CPU) into run folder ``out``; returns ``out``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "workflows.train_worker", "--prepared", prepared,
           "--config", resolved_yaml, "--fusion", fusion, "--modalities", ",".join(modalities),
           "--out", out]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"torchrun exited with {res.returncode}:\n{res.stderr[-3000:]}")
    return out


@task(name="log-variant", task_run_name="log-{name}")
def log_variant_task(
    name: str, folder: str, prepared: str, resolved_yaml: str, opened: dict[str, Any],
    register_as: str | None, tracking_uri: str | None, workdir: str,
) -> dict[str, Any]:
    """Log one run folder as a child run (``registry.experiment.log_run_folder``)."""
    from registry.experiment import log_run_folder, variant_run_dict

    cfg = load_config(resolved_yaml)
    run = log_run_folder(Path(folder), Path(prepared), cfg.model_dump(mode="json"),
                         opened["parent"], register_as, tracking_uri, Path(workdir))
    return variant_run_dict(run)


@task(name="close-experiment")
def close_experiment_task(
    opened: dict[str, Any], runs: list[dict[str, Any]], failed: dict[str, str],
    register_as: str | None, tracking_uri: str | None, workdir: str,
) -> dict[str, Any]:
    """Variants table, challenger alias, end the parent run
    (``registry.experiment.close_experiment``)."""
    from registry.experiment import close_experiment

    return close_experiment(opened, runs, failed, register_as, tracking_uri, Path(workdir))


def _reason(state: Any) -> str:
    """One line saying why a task failed (the exception's type and first line)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # the result itself could not be read
        exc = err
    if isinstance(exc, BaseException):
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
    return str(state.message or state.name)[:300]


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

    ``ddp=N`` trains each variant under torchrun with N processes (DDP); MLflow is never
    used inside the training processes. Raises ``VariantsFailed`` (with the summary) when
    any variant failed, after the others were logged and compared.
    """
    cfg = load_config(config, overrides)  # fail fast on a bad config, before any run starts
    names = fusions if fusions is not None else [cfg.model.fusion.name]
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    run_root = Path(workdir) / RUNS_DIR / stamp  # this flow run's run folders
    run_root.mkdir(parents=True, exist_ok=True)
    resolved_yaml = run_root / RESOLVED_FILE  # one resolved config: every task loads this file
    resolved_yaml.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    opened = open_experiment_task(prepared, str(resolved_yaml), names, baselines, experiment,
                                  tracking_uri, workdir, ddp)
    logger = get_run_logger()
    runs: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for v in opened["variants"]:
        out = str(run_root / v["name"])
        args = (v["name"], prepared, str(resolved_yaml), v["fusion"], v["modalities"], out)
        state = (train_variant_ddp_task(*args, ddp, return_state=True) if ddp > 0
                 else train_variant_task(*args, return_state=True))
        if state.is_completed():
            state = log_variant_task(v["name"], out, prepared, str(resolved_yaml), opened,
                                     register_as, tracking_uri, workdir, return_state=True)
        if not state.is_completed():
            failed[v["name"]] = _reason(state)
            logger.error("variant %s failed: %s", v["name"], failed[v["name"]])
            continue
        runs.append(state.result())
    summary = close_experiment_task(opened, runs, failed, register_as, tracking_uri, workdir)
    summary["run_folders"] = str(run_root)
    logger.info("trained %d of %d variants in experiment %r", len(runs),
                len(opened["variants"]), experiment)
    if failed:
        raise VariantsFailed(summary)
    return summary
