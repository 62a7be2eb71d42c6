"""`clinfuse score` runs no code from the artifact store, refuses changed weights, and keeps
the database password out of Prefect (flow-run parameters read back from its API).

A tiny-recipe model (untrained: the weights do not matter here) is registered in an
embedded MLflow store; an attacker then edits its stored files. MLflow's own loader is run
on the same edits as a control: it does execute the planted entry file, so "score was
unaffected" means something.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from fusion.artifact import ModelArtifact
from fusion.predictor import build_predictor
from fusion.tasks import cohort_task
from modalities.ingest import ingest_manifest
from registry.model import log_model, promote
from registry.tracking import Tracker
from synth import synth_cohort
from tests.servers import postgres_available, postgres_database
from workflows.config import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = "integrity"
CANARY = "canary-db-password-5f1c"


class _Touch:
    """Unpickling this creates a file: stands in for an attacker's shell command."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("integrity")
    synth_cohort(root / "synth", patients=8, seed=3)
    cfg = load_config("tiny")
    prepared = root / "prepared"
    ingest_manifest(root / "synth" / "manifest.csv", cfg.cohort, root / "synth", prepared,
                    labels=cohort_task(cfg.cohort))
    config = ModelArtifact.build(cfg.cohort, cfg.model, ["ct", "mri", "note"]).to_config()
    work = root / "work"
    with Tracker("integrity", "tiny", workdir=work) as tr:
        info = log_model(
            tr,
            build_predictor(config).model.state_dict(),
            config,
            builder="fusion.predictor:build_predictor",
            registered_name=MODEL,
        )
    promote(MODEL, info.registered_model_version, tracking_uri=tr.tracking_uri)
    (folder,) = {p.parent for p in (work / "mlartifacts").rglob("MLmodel")}
    return {
        "root": root,
        "prepared": prepared,
        "work": work,
        "uri": tr.tracking_uri,
        "folder": folder,
    }


def _score(store: dict, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store["uri"],
        "PREFECT_HOME": str(store["work"] / "prefect"),
        "PYTHONPATH": str(REPO),
    }
    env.pop("CLINFUSE_DB_URL", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "workflows.cli",
            "score",
            str(store["prepared"]),
            "--out",
            str(store["root"] / out),
            "--model",
            f"models:/{MODEL}@champion",
            "--workdir",
            str(store["work"]),
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=store["work"],
        timeout=900,
        check=False,
    )


def _plant_code(folder: Path, marker: Path) -> None:
    """What a writer of the artifact store can do: an entry file MLflow would execute, a
    pickle that runs a command when loaded, and an MLmodel pointing at them."""
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    mlmodel = folder / "MLmodel"
    text = mlmodel.read_text().replace("    data: data/clinfuse\n", "")
    mlmodel.write_text(
        text.replace(
            "loader_module: registry.model_format",
            "loader_module: mlflow.pyfunc.loaders.code_model\n    model_code_path: evil.py",
        )
    )
    assert "model_code_path: evil.py" in mlmodel.read_text()


def test_score_ignores_planted_code_and_keeps_the_db_password_out_of_prefect(
    store: dict,
) -> None:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    marker = store["root"] / "planted-code-ran"
    _plant_code(store["folder"], marker)
    with postgres_database("clinfuse_integrity") as url:
        secret_url = url.replace("://postgres@", f"://postgres:{CANARY}@", 1)
        res = _score(store, "pred", "--db-url", secret_url)
        assert res.returncode == 0, res.stderr[-3000:]
        assert not marker.exists(), "clinfuse score executed a file from the artifact store"
        summary = json.loads(res.stdout)
        assert summary["scored_now"] > 0 and summary["model_version"] == "1"
        with (
            psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://")) as conn,
            conn.cursor() as cur,
        ):  # the URL reached the task: rows were written
            cur.execute("SELECT count(*) FROM clinfuse_predictions")
            assert cur.fetchone()[0] == summary["scored_now"]

    # Prefect's own record of the run, read back through its API (same PREFECT_HOME).
    code = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        runs = await c.read_flow_runs()\n"
        "        print(json.dumps([{'name': r.name, 'flow_id': str(r.flow_id),\n"
        "                           'parameters': r.parameters} for r in runs], default=str))\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PREFECT_HOME": str(store["work"] / "prefect")}
    got = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    runs = json.loads(got.stdout.strip().splitlines()[-1])
    assert runs and any("prepared" in r["parameters"] for r in runs)
    for r in runs:
        assert "db_url" not in r["parameters"]
        assert CANARY not in json.dumps(r["parameters"])
    blobs = {str(p): p.read_bytes() for p in store["work"].rglob("*") if p.is_file()}
    assert any(p.endswith("prefect.db") for p in blobs)
    assert not [p for p, b in blobs.items() if CANARY.encode() in b]
    assert CANARY not in res.stdout + res.stderr


def test_mlflow_loader_runs_the_planted_code_control(store: dict, tmp_path: Path) -> None:
    """The same edits reach MLflow's loader: the pickle is refused because importing
    registry turned pickle loading off, the entry file runs (trusted registries only)."""
    marker = tmp_path / "control-ran"
    copy = tmp_path / "model"
    shutil.copytree(store["folder"], copy)
    _plant_code(copy, marker)
    pickled = tmp_path / "pickled"
    shutil.copytree(copy, pickled)
    (pickled / "MLmodel").write_text(
        (pickled / "MLmodel")
        .read_text()
        .replace(
            "loader_module: mlflow.pyfunc.loaders.code_model\n    model_code_path: evil.py",
            "loader_module: mlflow.pyfunc.model\n    python_model: python_model.pkl",
        )
    )
    code = (
        "import sys, registry, mlflow.pyfunc\n"
        "try:\n"
        f"    mlflow.pyfunc.load_model({str(pickled)!r})\n"
        "except Exception as e:\n"
        "    print('pickle refused:', 'pickle' in str(e), repr(e)[:300])\n"
        f"print('marker after pickle:', __import__('os').path.exists({str(marker)!r}))\n"
        "try:\n"
        f"    mlflow.pyfunc.load_model({str(copy)!r})\n"
        "except Exception:\n"
        "    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert "pickle refused: True" in res.stdout, res.stdout + res.stderr[-2000:]
    assert "marker after pickle: False" in res.stdout
    assert marker.exists(), "MLflow's code-model loader did not run the planted entry file"


def test_score_refuses_changed_weights_in_one_line(store: dict) -> None:
    weights = store["folder"] / "data" / "clinfuse" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0x01
    weights.write_bytes(bytes(data))
    res = _score(store, "pred-tampered")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert f"model {MODEL} v1" in errors[0] and "weights.safetensors" in errors[0]
    assert not (store["root"] / "pred-tampered").exists()  # refused before the flow started
    assert pd.Series(errors).str.len().iloc[0] < 400
