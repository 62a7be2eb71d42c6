"""The ``clinfuse`` command line. Imports stay light here: ``clinfuse --help`` must be quick.

Every command checks what it can before a flow starts (``workflows.checks``: names, paths,
model URIs, split sizes, manifest columns), then points Prefect at the shared local server
(``workflows.prefect_server``) and imports its flow lazily. User-caused errors
(``ClinfuseError``) print one line and exit with code 2, bugs keep their traceback. Long
commands draw progress on stderr (``workflows.progress``).
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
ModalitiesOpt = Annotated[
    str | None,
    typer.Option("--modalities", help="Keep only these modalities of the config, e.g. ct,note."),
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress on stderr (default: on a terminal, off with --json).",
    ),
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"clinfuse {version('clinfuse')}")
        except PackageNotFoundError:  # a source checkout that was never installed
            typer.echo("clinfuse (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Clinical multimodal diagnosis workflows: ingest DICOM/NIfTI + notes, fuse, track."""


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ClinfuseError into a one-line message and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from modalities.errors import ClinfuseError

        try:
            return fn(*args, **kwargs)
        except ClinfuseError as err:
            # One line whatever the terminal width (rich would wrap it).
            text = " ".join(str(err).split())
            sys.stderr.write(f"error: {text}\n")
            sys.stderr.flush()
            raise typer.Exit(2) from None

    return wrapper


def _start_flows() -> None:
    """Before a flow's module is imported: reuse (or start) the local Prefect server and
    keep user errors raised inside flows to one line (the CLI prints them once)."""
    from workflows.runtime import configure_runtime

    configure_runtime()  # Prefect's settings (analytics off, timeouts) reach the server too
    from workflows.prefect_server import ensure_server

    ensure_server()
    from prefect import flow  # noqa: F401  (sets up Prefect's logging: the filters attach)

    from workflows.runtime import quiet_user_errors

    quiet_user_errors()


def _progress(flag: bool | None, as_json: bool) -> Any:
    from workflows.progress import make_reporter, use

    return use(make_reporter(flag, as_json))


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


SYNTH_TASKS = ("clinical", "digits", "vqa")


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the synthetic cohort into.")],
    task: Annotated[str, typer.Option(help="clinical (CT+MRI+notes), digits (handwritten + "
                                           "spoken digits), vqa (digit image + question).")
                    ] = "clinical",
    patients: Annotated[
        int | None,
        typer.Option("--patients", "--samples",
                     help="Patients (clinical, default 50) or samples (digits, vqa: 600)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    bad_inputs: Annotated[int, typer.Option(help="Extra patients with planted bad inputs.")] = 0,
    label_rule: Annotated[
        str, typer.Option(help="majority (vote of the findings) or xor (needs two modalities).")
    ] = "majority",
    modalities: Annotated[
        str, typer.Option(help="Comma-separated modalities to write (ct,mri,note).")
    ] = "ct,mri,note",
    image_noise: Annotated[
        float | None, typer.Option(help="image noise SD on [0, 1] (digits 0.25, vqa 0.1).")
    ] = None,
    occlusion: Annotated[
        float | None, typer.Option(help="share of images with a smudge (digits 0.5, vqa 0).")
    ] = None,
    audio_snr: Annotated[
        str | None, typer.Option(help="digits: SNR levels in dB, e.g. =-12,-6,0,6.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a synthetic cohort and its manifest: clinical (fake PHI) or digits/vqa."""
    from pydantic import ValidationError

    from modalities.errors import ConfigError, UnknownNameError
    from workflows import checks

    if task not in SYNTH_TASKS:
        raise UnknownNameError("synth task", task, list(SYNTH_TASKS))
    if task != "clinical":
        if bad_inputs or label_rule != "majority" or modalities != "ct,mri,note":
            raise ConfigError("--bad-inputs, --label-rule and --modalities apply to "
                              "--task clinical only")
        _synth_digits(out, task, 600 if patients is None else patients, seed,
                      {"image_noise": image_noise, "occlusion": occlusion}, audio_snr, as_json)
        return
    if image_noise is not None or occlusion is not None or audio_snr is not None:
        raise ConfigError("--image-noise, --occlusion and --audio-snr apply to --task digits "
                          "and vqa only")
    patients = 50 if patients is None else patients
    checks.at_least("--patients", patients, 1)
    checks.at_least("--bad-inputs", bad_inputs, 0)

    from synth import SynthConfig, synth_cohort

    try:
        cfg = SynthConfig(label_rule=label_rule,
                          modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()))
    except ValidationError as err:
        raise ConfigError(f"synth: {err.errors()[0]['msg']}") from None
    with _stdout_for(as_json):
        res = synth_cohort(out, patients=patients, seed=seed, bad_inputs=bad_inputs, config=cfg)
    _emit(
        {
            "out": str(out),
            "manifest": str(Path(out) / "manifest.csv"),
            "patients": patients,
            "bad_inputs": bad_inputs,
            "seconds": round(getattr(res, "seconds", 0.0), 2),
        },
        as_json,
        "synthetic cohort",
    )


def _synth_digits(
    out: Path, task: str, n: int, seed: int, knobs: dict[str, float | None],
    audio_snr: str | None, as_json: bool,
) -> None:
    """``clinfuse synth --task digits|vqa``: handwritten + spoken digits (docs/tasks.md)."""
    from modalities.errors import ConfigError
    from workflows import checks

    checks.at_least("--samples", n, 1)  # the others: synth_digits checks them
    kwargs: dict[str, Any] = {k: v for k, v in knobs.items() if v is not None}
    if audio_snr is not None:
        if task != "digits":
            raise ConfigError("--audio-snr applies to --task digits only (vqa has no audio)")
        try:
            kwargs["audio_snr"] = tuple(float(v) for v in audio_snr.split(",") if v.strip())
        except ValueError:
            raise ConfigError("--audio-snr takes numbers in dB separated by commas, e.g. "
                              "--audio-snr=-12,-6,0,6") from None
    from synth.digits import synth_digits

    with _stdout_for(as_json):
        res = synth_digits(out, n=n, seed=seed, task=task, **kwargs)  # type: ignore[arg-type]
    recipe = "digits" if task == "digits" else "digits_vqa"
    _emit({"out": str(out), "manifest": str(res.manifest), "task": task, "samples": n,
           "config": recipe, "seconds": round(res.seconds, 2)}, as_json, f"synthetic {task}")


@app.command()
@user_errors
def index(
    dicom_root: Annotated[Path, typer.Argument(help="Unsorted DICOM drop to scan.")],
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write.")],
    notes: Annotated[Path | None, typer.Option(help="Notes export (.csv or .jsonl).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Scan a DICOM drop (headers only), pick one series per modality, join notes."""
    from workflows import checks

    checks.existing_dir("DICOM root", dicom_root)
    if notes is not None:
        checks.existing_file("notes export", notes)
    from modalities.dicom_index import index_dicom, write_manifest

    with _stdout_for(as_json):
        res = index_dicom(dicom_root, notes)
        write_manifest(res, out)
    reasons = res.skipped["reason"].value_counts().to_dict() if len(res.skipped) else {}
    _emit(
        {
            "patients": len(res.manifest),
            "manifest": str(out),
            "skipped": len(res.skipped),
            "skipped_reasons": reasons,
        },
        as_json,
        "DICOM index",
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
    modalities: ModalitiesOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate, de-identify, preprocess and cache a manifest into a prepared cohort."""
    from workflows.recipes import select_modalities

    overrides = select_modalities(config, set_, modalities)  # YAML only: no torch yet
    from modalities.pseudonym import Pseudonymizer
    from workflows import checks
    from workflows.config import load_config

    cfg = load_config(config, overrides)
    checks.manifest(manifest, cfg.cohort)
    if data_root is not None:
        checks.existing_dir("--data-root", data_root)
    Pseudonymizer.from_env()
    cfg.cohort.build()  # unknown modality types and bad specs
    _start_flows()
    from workflows.ingest import run_ingest

    with _stdout_for(as_json), _progress(progress, as_json):
        summary = run_ingest(manifest, out, config, overrides, data_root, dask)
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
    modalities: ModalitiesOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train fusion variants (and unimodal baselines) and track them in MLflow."""
    from workflows.recipes import select_modalities

    overrides = select_modalities(config, set_, modalities)  # YAML only: no torch yet
    from workflows import checks
    from workflows.config import load_config

    checks.at_least("--ddp", ddp, 0)
    cfg = load_config(config, overrides)
    checks.prepared_folder(prepared)
    from workflows.runtime import configure_runtime

    configure_runtime()  # offline and quiet before torch/transformers load for the checks
    checks.train(
        prepared, cfg, fusion if fusion is not None else [cfg.model.fusion.name], baselines
    )
    _start_flows()
    from workflows.train import VariantsFailed, train_flow

    failed: VariantsFailed | None = None
    with _stdout_for(as_json), _progress(progress, as_json):
        try:
            summary = train_flow(
                str(prepared),
                config,
                overrides,
                fusion,
                baselines,
                experiment,
                register,
                None,
                str(workdir),
                ddp,
            )
        except VariantsFailed as err:  # the others were trained, logged and compared
            failed, summary = err, err.summary
    if as_json:
        _emit(summary, True, "train")
    else:
        _variants_table(summary["variants"], "test metrics (95% CI)")
    if failed is not None:
        for name, reason in sorted(summary["failed"].items()):
            sys.stderr.write(f"error: variant {name} failed: {reason}\n")
        raise typer.Exit(1)


# Summary metrics the train table may show, in order (registry.experiment's records).
VARIANT_METRICS = ("auroc", "accuracy", "auprc", "brier", "recall@1", "median_rank")


def _variants_table(rows: list[dict[str, Any]], title: str) -> None:
    """One row per variant; a metric column only where some variant has that metric (a
    classifier's AUROC and accuracy with their CIs, a retrieval model's Recall@1)."""
    from rich.table import Table

    def f(v: Any) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"

    def with_ci(r: dict[str, Any], k: str) -> str:
        lo, hi = r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
        return f(r.get(k)) + ("" if lo is None or lo != lo else f" [{f(lo)}–{f(hi)}]")

    metrics = [k for k in VARIANT_METRICS
               if any(r.get(k) is not None and r.get(k) == r.get(k) for r in rows)]
    table = Table(title=title)
    for col in ("variant", "modalities", "n_test", *metrics, "version"):
        table.add_column(col)
    for r in rows:
        n = r.get("n_test")
        table.add_row(
            str(r.get("variant")), str(r.get("modalities")),
            "?" if n is None or n != n else str(int(n)),
            *[with_ci(r, k) for k in metrics], str(r.get("version") or "-"),
        )
    Console().print(table)
    for r in rows:  # after the table: the numbers above are not a reliable ranking
        if r.get("warning"):
            console.print(f"[yellow]warning:[/] {r['variant']}: {r['warning']}", highlight=False)


@app.command()
@user_errors
def compare(
    experiment: Annotated[str, typer.Option(help="MLflow experiment to compare.")] = "clinfuse",
    metric: Annotated[str | None, typer.Option(help=(
        "Metric to rank by (default: the task's monitored test metric: test_auroc for "
        "binary, test_recall_at_1 for contrastive)."))] = None,
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
    from registry.lookup import require_store

    require_store(None, workdir)
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
    top_k: Annotated[int, typer.Option(
        "--top-k", help="Retrieval models: nearest neighbours per patient and tower pair.")
    ] = 5,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a prepared cohort with a registered model; exactly once, resumable.

    A retrieval model writes embeddings (predictions.parquet, embeddings.parquet) and the
    top-k neighbours of the scored cohort (neighbours.parquet) instead of probabilities.
    """
    from workflows import checks

    checks.at_least("--batch-size", batch_size, 1)
    checks.at_least("--top-k", top_k, 1)
    checks.at_least("--shards", shards, 1)
    checks.prepared_folder(prepared)
    from workflows.runtime import configure_runtime

    configure_runtime()
    checks.model_uri(model, None, workdir)
    _start_flows()
    from workflows.score import run_score

    with _stdout_for(as_json), _progress(progress, as_json):
        summary = run_score(prepared, out, model, db_url, workdir, batch_size, dask, shards,
                            top_k=top_k)
    if as_json:
        _emit(summary, True, "score")
        return
    brief = {
        k: summary[k]
        for k in (
            "model_name",
            "model_version",
            "eligible",
            "scored_now",
            "already_scored",
            "skipped_by_reason",
            "predictions_path",
            "mlflow_run_id",
        )
    }
    brief |= {k: v for k, v in summary.get("extras", {}).items() if k.endswith("_path")}
    _emit(brief, False, "score")


@app.command()
@user_errors
def serve(
    config: ConfigOpt = "default",
    set_: SetOpt = None,
) -> None:
    """Serve the nightly pipeline (cron from config) and on-demand scoring via Prefect."""
    from workflows.config import load_config

    load_config(config, set_)  # bad keys, cron time zone: before Prefect starts
    from workflows.serve import serve as run_serve

    run_serve(config, set_)


@app.command()
@user_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(
        "demo-workdir"
    ),
    task: Annotated[str, typer.Option(
        help="clinical (CT + note, XOR label) or digits (handwritten + spoken digits, "
             "10 classes).")] = "clinical",
    patients: Annotated[
        int | None,
        typer.Option("--patients", "--samples",
                     help="Synthetic patients (clinical: 320, 48 tested) or samples (digits: "
                          "3000, 450 tested)."),
    ] = None,
    seed: int = 0,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """End to end on embedded defaults: synth -> ingest -> train -> compare -> score."""
    from modalities.errors import UnknownNameError
    from workflows import checks
    from workflows.demo import DEMO_TASKS, DIGITS_SAMPLES, run_demo, run_digits_demo

    if task not in DEMO_TASKS:
        raise UnknownNameError("demo task", task, list(DEMO_TASKS))
    # Fewer rows leave a split empty (70/15/15; the clinical demo adds 4 bad inputs).
    checks.at_least("--samples" if task == "digits" else "--patients", patients,
                    DEMO_MIN_DIGITS if task == "digits" else DEMO_MIN_PATIENTS)
    console = Console(stderr=True) if as_json else Console()
    with _stdout_for(as_json), _progress(progress, as_json):
        if task == "digits":
            results = run_digits_demo(workdir, samples=patients or DIGITS_SAMPLES, seed=seed,
                                      console=console)
        else:
            results = run_demo(workdir, patients=patients or 320, seed=seed, console=console)
    if as_json:
        _emit(results, True, "demo")


DEMO_MIN_PATIENTS = 20
DEMO_MIN_DIGITS = 100  # 10 per class: every split holds each digit


@app.command(name="configs")
def list_configs(as_json: JsonOpt = False) -> None:
    """List the shipped config recipes."""
    from workflows.recipes import available_configs

    names = available_configs()
    if as_json:
        sys.stdout.write(json.dumps(names) + "\n")
        return
    for name in names:
        typer.echo(name)


server_app = typer.Typer(
    help="The local Prefect server the CLI reuses across commands.", no_args_is_help=True
)
app.add_typer(server_app, name="server")


@server_app.command("start")
@user_errors
def server_start(as_json: JsonOpt = False) -> None:
    """Start (or find) this PREFECT_HOME's server; later commands reuse it."""
    from workflows.prefect_server import ensure_server, mode, server_status

    if mode() != "shared":
        raise _not_shared(mode())
    ensure_server()
    _emit(server_status(), as_json, "prefect server")


@server_app.command("stop")
@user_errors
def server_stop(as_json: JsonOpt = False) -> None:
    """Stop this PREFECT_HOME's server (by its PID)."""
    from workflows.prefect_server import stop_server

    state = stop_server()
    _emit(
        {"stopped": state is not None, **({"pid": state["pid"]} if state else {})},
        as_json,
        "prefect server",
    )


@server_app.command("status")
@user_errors
def server_status_cmd(as_json: JsonOpt = False) -> None:
    """Show this PREFECT_HOME's server: PID, API URL, whether it answers."""
    from workflows.prefect_server import server_status

    _emit(server_status(), as_json, "prefect server")


def _not_shared(m: str) -> Exception:
    from modalities.errors import ClinfuseError

    why = (
        "PREFECT_API_URL points at a server already"
        if m == "external"
        else "CLINFUSE_PREFECT_SERVER=ephemeral"
    )
    return ClinfuseError(f"no shared local server in this mode: {why}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
