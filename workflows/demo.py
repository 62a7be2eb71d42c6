"""``clinfuse demo``: the main job end to end on embedded defaults and synthetic data.

Stages: synth -> ingest (twice: the second run shows the cache at work) -> train fusion
variants and unimodal baselines -> compare and promote a champion -> score the cohort with
the champion. Everything lands under one work folder: the synthetic cohort, the prepared
cohort, the MLflow SQLite store and artifacts, predictions, and Prefect's home.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def run_demo(
    workdir: Path, patients: int = 60, seed: int = 0, console: Console | None = None,
    train: bool = True,
) -> dict[str, Any]:
    """Run every stage on synthetic data; return the per-stage summaries."""
    console = console or Console()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(workdir / ".prefect"))
    from workflows.prefect_server import ensure_server
    from workflows.progress import reporter

    ensure_server()  # one local Prefect server for all stages (and later commands)
    rep = reporter()
    stages = ["synth", "ingest", "re-ingest"] + (["train", "compare", "score"] if train else [])
    rep.start("demo", "demo stages", len(stages))
    results: dict[str, Any] = {}

    from modalities.synth import synth_cohort

    t0 = time.perf_counter()
    data = workdir / "synthetic"
    synth_cohort(data, patients=patients, seed=seed, bad_inputs=4)
    results["synth"] = {"patients": patients, "bad_inputs": 4, "folder": str(data)}
    rep.update("demo", advance=1, info="synth")
    console.print(f"[green]synth[/]   {patients} patients (+4 with planted bad inputs) in "
                  f"{time.perf_counter() - t0:.1f}s -> {data}")

    from workflows.ingest import run_ingest

    prepared = workdir / "prepared"
    for attempt in ("ingest", "re-ingest"):
        t0 = time.perf_counter()
        summary = run_ingest(
            data / "manifest.csv", prepared, config="tiny", allow_demo_key=True
        )
        results[attempt] = summary
        rep.update("demo", advance=1, info=attempt)
        console.print(
            f"[green]{attempt:<8}[/] {summary['inputs']} inputs: {summary['accepted']} accepted, "
            f"{summary['quarantined']} quarantined, {summary['computed']} computed, "
            f"{summary['cached']} from cache in {time.perf_counter() - t0:.1f}s"
        )

    _reasons_table(console, results["ingest"]["reasons"])
    console.print(f"prepared cohort: {prepared / 'cohort.parquet'}\n"
                  f"quarantine:      {prepared / 'quarantine.parquet'}")
    if not train:
        return results

    from workflows.compare import run_compare
    from workflows.score import run_score
    from workflows.train import train_flow

    tracking = f"sqlite:///{workdir / 'mlflow.db'}"  # absolute path: four slashes in all
    t0 = time.perf_counter()
    results["train"] = train_flow(
        str(prepared), "tiny", None, ["concat", "gated", "cross_attention"], True,
        "clinfuse-demo", MODEL_NAME, tracking, str(workdir),
    )
    rep.update("demo", advance=1, info="train")
    console.print(f"[green]train[/]    {len(results['train']['variants'])} models "
                  f"(3 fusion + 3 unimodal baselines) in {time.perf_counter() - t0:.0f}s")
    results["compare"] = run_compare(
        "clinfuse-demo", "test_auroc", MODEL_NAME, workdir, console, tracking_uri=tracking
    )
    rep.update("demo", advance=1, info="compare")
    t0 = time.perf_counter()
    results["score"] = run_score(
        prepared, workdir / "predictions", f"models:/{MODEL_NAME}@champion",
        workdir=workdir, tracking_uri=tracking,
    )
    sc = results["score"]
    rep.update("demo", advance=1, info="score")
    console.print(
        f"[green]score[/]    {sc['scored_now']} patients scored with {sc['model_name']} "
        f"v{sc['model_version']} ({len(sc['skipped'])} reported as not scorable) in "
        f"{time.perf_counter() - t0:.0f}s -> {sc['predictions_path']}"
    )
    console.print(
        "\nOpen the MLflow UI on the demo's store:\n"
        f"  mlflow ui --backend-store-uri {tracking} --port 5000\n"
        "Prefect runs of this demo, in Prefect's UI (stop the demo's background server first):\n"
        f"  PREFECT_HOME={os.environ['PREFECT_HOME']} clinfuse server stop\n"
        f"  PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start"
    )
    return results


MODEL_NAME = "clinfuse-demo"


def _reasons_table(console: Console, reasons: dict[str, int]) -> None:
    table = Table(title="quarantined inputs by reason")
    table.add_column("reason code")
    table.add_column("inputs", justify="right")
    for code, n in reasons.items():
        table.add_row(code, str(n))
    console.print(table)
