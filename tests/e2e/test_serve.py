"""`clinfuse serve` against a real `prefect server start`: the nightly deployment runs on
demand over a DICOM drop + notes export and scores with the champion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.conftest import MODEL
from tests.servers import free_port, start_process, stop_process

pytestmark = pytest.mark.slow


def _drop_folder(synthetic_cohort: Path, dest: Path, n: int = 12) -> tuple[Path, Path]:
    """A hospital-style drop: CT series folders and one notes JSONL export."""
    manifest = pd.read_csv(synthetic_cohort / "manifest.csv", dtype=str,
                           keep_default_na=False).head(n)
    drop, notes = dest / "dicom-drop", dest / "notes"
    notes.mkdir(parents=True)
    with open(notes / "export.jsonl", "w") as fh:
        for _, r in manifest.iterrows():
            if r["ct"]:
                shutil.copytree(synthetic_cohort / r["ct"], drop / f"incoming-{_}")
            if r["note"]:
                text = (synthetic_cohort / r["note"]).read_text()
                fh.write(json.dumps({"patient_id": r["patient_id"], "text": text}) + "\n")
    return drop, notes


def test_served_nightly_deployment_runs_on_demand(
    trained: dict, synthetic_cohort: Path, mlflow_server: str, tmp_path: Path
) -> None:
    drop, notes = _drop_folder(synthetic_cohort, tmp_path / "data")
    work = tmp_path / "data" / "work"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(tmp_path / "prefect-server"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api}
    server = start_process(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        f"{api}/health", env, tmp_path / "prefect-server.log", timeout_s=120,
    )
    serve = None
    try:
        serve_env = {**os.environ, **env, "PREFECT_HOME": str(tmp_path / "prefect-client"),
                     "MLFLOW_TRACKING_URI": mlflow_server}
        with open(tmp_path / "serve.log", "wb") as log:  # the child keeps its own handle
            serve = subprocess.Popen(
                [sys.executable, "-m", "workflows.cli", "serve", "--config", "tiny",
                 "--set", f"serve.drop_dir={drop}", "--set", f"serve.notes={notes}",
                 "--set", f"serve.workdir={work}",
                 "--set", f"serve.model=models:/{MODEL}@champion"],
                env=serve_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        run = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the deployment appears once serve registered it
            run = subprocess.run(
                [sys.executable, "-m", "prefect", "deployment", "run",
                 "clinfuse-nightly/nightly", "--watch", "--watch-timeout", "900"],
                env=serve_env, capture_output=True, text=True, timeout=1000, check=False,
            )
            if "not found" not in (run.stdout + run.stderr).lower():
                break
            time.sleep(3)
        assert run is not None and run.returncode == 0, (
            (run.stdout + run.stderr)[-3000:] if run else "",
            (tmp_path / "serve.log").read_text()[-3000:],
        )
        assert "Completed" in run.stdout + run.stderr
    finally:
        if serve is not None:
            stop_process(serve)
        server.stop()
    cohort = pd.read_parquet(work / "prepared" / "cohort.parquet")
    assert len(cohort) == 12
    pred = work / "predictions" / "predictions.parquet"
    assert pred.exists()
    assert pd.read_parquet(pred)["patient"].isin(cohort["patient"]).all()
