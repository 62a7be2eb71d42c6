"""The ``clinfuse`` command line. Imports stay light here: ``clinfuse --help`` must be quick.

Every command imports its flow lazily; user-caused errors (``ClinfuseError``) print one
clear line and exit with code 2, bugs keep their traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    name="clinfuse",
    help="Clinical multimodal diagnosis workflows: ingest DICOM/NIfTI + notes, fuse, track.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Recipe name or YAML path.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: key.path=value.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ClinfuseError into a one-line message and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from modalities.errors import ClinfuseError

        try:
            return fn(*args, **kwargs)
        except ClinfuseError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _stdout_for(as_json: bool) -> Any:
    """With --json, stdout carries only the JSON: libraries' prints go to stderr meanwhile."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def _emit(summary: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for k, v in summary.items():
        table.add_row(str(k), json.dumps(v) if isinstance(v, dict | list) else str(v))
    Console().print(table)


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the synthetic cohort into.")],
    patients: Annotated[int, typer.Option(help="Number of patients.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    bad_inputs: Annotated[int, typer.Option(help="Extra patients with planted bad inputs.")] = 0,
    label_rule: Annotated[
        str, typer.Option(help="majority (vote of the findings) or xor (needs two modalities).")
    ] = "majority",
    modalities: Annotated[
        str, typer.Option(help="Comma-separated modalities to write (ct,mri,note).")
    ] = "ct,mri,note",
    as_json: JsonOpt = False,
) -> None:
    """Write a synthetic CT (DICOM) + MRI (NIfTI) + notes cohort with fake PHI and a manifest."""
    from pydantic import ValidationError

    from modalities.errors import ConfigError
    from modalities.synth import SynthConfig, synth_cohort

    try:
        cfg = SynthConfig(label_rule=label_rule,
                          modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()))
    except ValidationError as err:
        raise ConfigError(f"synth: {err.errors()[0]['msg']}") from None
    with _stdout_for(as_json):
        res = synth_cohort(out, patients=patients, seed=seed, bad_inputs=bad_inputs, config=cfg)
    _emit(
        {"out": str(out), "manifest": str(Path(out) / "manifest.csv"), "patients": patients,
         "bad_inputs": bad_inputs, "seconds": round(getattr(res, "seconds", 0.0), 2)},
        as_json, "synthetic cohort",
    )


@app.command()
@user_errors
def index(
    dicom_root: Annotated[Path, typer.Argument(help="Unsorted DICOM drop to scan.")],
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write.")],
    notes: Annotated[Path | None, typer.Option(help="Notes export (.csv or .jsonl).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Scan a DICOM drop (headers only), pick one series per modality, join notes."""
    from modalities.dicom_index import index_dicom, write_manifest

    with _stdout_for(as_json):
        res = index_dicom(dicom_root, notes)
        write_manifest(res, out)
    reasons = res.skipped["reason"].value_counts().to_dict() if len(res.skipped) else {}
    _emit(
        {"patients": len(res.manifest), "manifest": str(out), "skipped": len(res.skipped),
         "skipped_reasons": reasons},
        as_json, "DICOM index",
    )


@app.command()
@user_errors
def ingest(
    manifest: Annotated[Path, typer.Argument(help="Manifest (.csv, .parquet, .jsonl).")],
    out: Annotated[Path, typer.Option("--out", help="Prepared cohort folder.")],
    config: ConfigOpt = "default",
    set_: SetOpt = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Inputs must lie under it (default: manifest folder).")
    ] = None,
    dask: Annotated[
        str | None, typer.Option(help="Dask scheduler address, or 'local' for a LocalCluster.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate, de-identify, preprocess and cache a manifest into a prepared cohort."""
    from workflows.ingest import run_ingest

    with _stdout_for(as_json):
        summary = run_ingest(manifest, out, config, set_, data_root, dask)
    _emit(summary, as_json, "ingest")


@app.command()
@user_errors
def train(
    prepared: Annotated[Path, typer.Argument(help="Prepared cohort folder (from ingest).")],
    config: ConfigOpt = "default",
    fusion: Annotated[
        list[str] | None, typer.Option("--fusion", help="Fusion strategy; repeat for several.")
    ] = None,
    baselines: Annotated[bool, typer.Option(help="Also train one unimodal model each.")] = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "clinfuse",
    register: Annotated[
        str | None, typer.Option(help="Register every variant as a version of this model.")
    ] = None,
    set_: SetOpt = None,
    workdir: Annotated[Path, typer.Option(help="Local MLflow store/spool folder.")] = Path("."),
    ddp: Annotated[
        int, typer.Option(help="Train each variant with torchrun/DDP on N processes (GPUs).")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train fusion variants (and unimodal baselines) and track them in MLflow."""
    from workflows.train import train_flow

    with _stdout_for(as_json):
        summary = train_flow(
            str(prepared), config, set_, fusion, baselines, experiment, register, None,
            str(workdir), ddp,
        )
    if as_json:
        _emit(summary, True, "train")
        return
    _variants_table(summary["variants"], "test metrics (95% CI)")


def _variants_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("variant", "modalities", "n_test", "auroc", "95% CI", "auprc", "brier",
                "version"):
        table.add_column(col)

    def f(v: Any) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"

    for r in rows:
        n = r.get("n_test")
        table.add_row(
            str(r.get("variant")), str(r.get("modalities")),
            "?" if n is None or n != n else str(int(n)), f(r.get("auroc")),
            f"{f(r.get('auroc_ci_low'))}–{f(r.get('auroc_ci_high'))}", f(r.get("auprc")),
            f(r.get("brier")), str(r.get("version") or "-"),
        )
    Console().print(table)
    for r in rows:  # after the table: the numbers above are not a reliable ranking
        if r.get("warning"):
            console.print(f"[yellow]warning:[/] {r['variant']}: {r['warning']}", highlight=False)


@app.command()
@user_errors
def compare(
    experiment: Annotated[str, typer.Option(help="MLflow experiment to compare.")] = "clinfuse",
    metric: Annotated[str, typer.Option(help="Metric to rank by.")] = "test_auroc",
    promote: Annotated[
        str | None, typer.Option(help="Give the best run's version of this model 'champion'.")
    ] = None,
    workdir: Annotated[Path, typer.Option(help="Local MLflow store folder.")] = Path("."),
    force: Annotated[bool, typer.Option(
        "--force", help="Promote even if the best run's CI overlaps the runner-up's (tagged).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare every run of an experiment; optionally promote the best to champion."""
    if force and not promote:
        from modalities.errors import ConfigError

        raise ConfigError("--force only applies with --promote NAME; add --promote or drop it")
    from workflows.compare import run_compare

    with _stdout_for(as_json):
        summary = run_compare(experiment, metric, promote, workdir,
                              console=None if as_json else Console(), force=force)
    if as_json:
        _emit(summary, True, "compare")


@app.command()
@user_errors
def score(
    prepared: Annotated[Path, typer.Argument(help="Prepared cohort folder (from ingest).")],
    out: Annotated[Path, typer.Option("--out", help="Predictions folder.")],
    model: Annotated[str, typer.Option(help="Model URI, models:/NAME@ALIAS.")] = (
        "models:/clinfuse@champion"
    ),
    db_url: Annotated[
        str | None,
        typer.Option(help="PostgreSQL URL: predictions are upserted into clinfuse_predictions."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Patients per forward pass.")] = 64,
    dask: Annotated[
        str | None, typer.Option(help="Dask scheduler address, or 'local' for a LocalCluster.")
    ] = None,
    shards: Annotated[int | None, typer.Option(help="Shards to fan out (default 2 w/ Dask).")] = (
        None
    ),
    workdir: Annotated[Path, typer.Option(help="Local MLflow store folder.")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Score a prepared cohort with a registered model; exactly once, resumable."""
    from workflows.score import run_score

    with _stdout_for(as_json):
        summary = run_score(prepared, out, model, db_url, workdir, batch_size, dask, shards)
    if as_json:
        _emit(summary, True, "score")
        return
    brief = {k: summary[k] for k in ("model_name", "model_version", "eligible", "scored_now",
                                      "already_scored", "skipped_by_reason", "predictions_path",
                                      "mlflow_run_id")}
    _emit(brief, False, "score")


@app.command()
@user_errors
def serve(
    config: ConfigOpt = "default",
    set_: SetOpt = None,
) -> None:
    """Serve the nightly pipeline (cron from config) and on-demand scoring via Prefect."""
    from workflows.serve import serve as run_serve

    run_serve(config, set_)


@app.command()
@user_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(
        "demo-workdir"
    ),
    patients: Annotated[int, typer.Option(help="Synthetic patients.")] = 60,
    seed: int = 0,
) -> None:
    """End to end on embedded defaults: synth -> ingest (and later stages), with a summary."""
    from workflows.demo import run_demo

    run_demo(workdir, patients=patients, seed=seed, console=Console())


@app.command(name="configs")
def list_configs() -> None:
    """List the shipped config recipes."""
    from workflows.config import available_configs

    for name in available_configs():
        typer.echo(name)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
