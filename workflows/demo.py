"""``clinfuse demo``: the main job end to end on embedded defaults and synthetic data.

Stages: synth -> ingest (a second ingest run shows the cache at work). Everything lands
under one work folder: the synthetic cohort, the prepared cohort, Prefect's home.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def run_demo(
    workdir: Path, patients: int = 60, seed: int = 0, console: Console | None = None
) -> dict[str, Any]:
    """Run every stage on synthetic data; return the per-stage summaries."""
    console = console or Console()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(workdir / ".prefect"))
    results: dict[str, Any] = {}

    from modalities.synth import synth_cohort

    t0 = time.perf_counter()
    data = workdir / "synthetic"
    synth_cohort(data, patients=patients, seed=seed, bad_inputs=4)
    results["synth"] = {"patients": patients, "bad_inputs": 4, "folder": str(data)}
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
        console.print(
            f"[green]{attempt:<8}[/] {summary['inputs']} inputs: {summary['accepted']} accepted, "
            f"{summary['quarantined']} quarantined, {summary['computed']} computed, "
            f"{summary['cached']} from cache in {time.perf_counter() - t0:.1f}s"
        )

    table = Table(title="quarantined inputs by reason")
    table.add_column("reason code")
    table.add_column("inputs", justify="right")
    for code, n in results["ingest"]["reasons"].items():
        table.add_row(code, str(n))
    console.print(table)
    console.print(f"prepared cohort: {prepared / 'cohort.parquet'}\n"
                  f"quarantine:      {prepared / 'quarantine.parquet'}")
    return results
