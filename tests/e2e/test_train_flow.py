"""Train -> compare -> promote -> load by alias in a fresh process, against real MLflow servers.

The champion scores raw inputs (DICOM folders, NIfTI files, note files) through
``mlflow.pyfunc`` and must reproduce the per-case predictions logged at training time from
the prepared cache (same preprocessing as ingest). A PHI canary then greps MLflow's
database, artifacts and the CLI output for the fake PHI synth wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from modalities.pseudonym import Pseudonymizer
from tests.e2e.conftest import EXPERIMENT, MODEL, clinfuse

pytestmark = pytest.mark.slow

# What each variant of the `trained` fixture was planned as: (fusion, modalities).
PLANNED = {
    "concat": ("concat", "ct,mri,note"),
    "cross_attention": ("cross_attention", "ct,mri,note"),
    "unimodal_ct": ("concat", "ct"),
    "unimodal_mri": ("concat", "mri"),
    "unimodal_note": ("concat", "note"),
}
LOGGED = {"model_card.md", "plots/training_curves.png", "plots/roc.png", "plots/pr.png",
          "plots/calibration.png", "plots/confusion.png", "tables/predictions.csv",
          "tables/explanations.csv"}


def _artifacts(client, run_id: str) -> set[str]:
    """A run's artifact paths, one folder level deep (``plots/roc.png``)."""
    out: set[str] = set()
    for a in client.list_artifacts(run_id):
        out |= {b.path for b in client.list_artifacts(run_id, a.path)} if a.is_dir else {a.path}
    return out


def test_every_variant_tracked_and_registered(trained: dict) -> None:
    s = trained["summary"]
    names = {v["variant"] for v in s["variants"]}
    assert names == {"concat", "cross_attention", "unimodal_ct", "unimodal_mri",
                     "unimodal_note"}
    for v in s["variants"]:
        assert 0.0 <= v["auroc"] <= 1.0 and v["auroc_ci_low"] <= v["auroc"] <= v["auroc_ci_high"]
        assert v["version"] is not None
    assert s["challenger_version"] is not None and s["tracking"] == "finished"
    assert set(s["split_sizes"]) == {"train", "val", "test"}


def test_compare_promotes_the_best_run(trained: dict, mlflow_server: str) -> None:
    from mlflow import MlflowClient

    c = trained["comparison"]
    assert c["runs"] == 5 and c["champion"] is not None
    ranking = [r["test_auroc"] for r in c["ranking"]]
    assert ranking == sorted(ranking, reverse=True)
    client = MlflowClient(mlflow_server)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == str(c["champion"])
    run = client.get_run(champion.run_id)
    assert run.data.metrics["test_auroc"] == pytest.approx(ranking[0])
    params = run.data.params
    assert (params["fusion"], params["modalities"]) == PLANNED[run.info.run_name]
    arts = {a.path for a in client.list_artifacts(champion.run_id, "plots")}
    assert {"plots/roc.png", "plots/calibration.png", "plots/training_curves.png"} <= arts
    card = client.download_artifacts(champion.run_id, "model_card.md", str(trained["work"]))
    assert "95% CI" in Path(card).read_text()


def test_each_run_logs_the_variant_it_was_planned_as(trained: dict, mlflow_server: str) -> None:
    """Every child run's fusion and modalities are those of its variant, unimodal flag and
    world size included, and each logged the same set of artifacts (one logging path)."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    parent = trained["summary"]["parent_run_id"]
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == sorted(PLANNED)
    for r in children:
        p = r.data.params
        assert (p["fusion"], p["modalities"]) == PLANNED[r.info.run_name], r.info.run_name
        assert p["unimodal"] == str("," not in p["modalities"]).lower()
        assert p["world_size"] == "1"
        assert r.data.tags["clinfuse.variant"] == r.info.run_name
        assert _artifacts(client, r.info.run_id) >= LOGGED, r.info.run_name


def test_champion_scores_raw_inputs_in_a_fresh_process(
    trained: dict, synthetic_cohort: Path, mlflow_server: str
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    run_id = client.get_model_version_by_alias(MODEL, "champion").run_id
    table = pd.read_csv(client.download_artifacts(run_id, "tables/predictions.csv",
                                                  str(trained["work"])))
    manifest = pd.read_csv(synthetic_cohort / "manifest.csv", dtype=str, keep_default_na=False)
    pseudo = Pseudonymizer.from_env()
    manifest["patient"] = manifest["patient_id"].map(pseudo)
    raw = manifest[manifest["patient"].isin(table["patient"])].copy()
    for col in ("ct", "mri", "note"):
        raw[col] = [str(synthetic_cohort / v) if v else "" for v in raw[col]]
    inputs = trained["work"] / "raw_inputs.csv"
    raw[["patient", "ct", "mri", "note"]].to_csv(inputs, index=False)
    out = trained["work"] / "pyfunc_out.csv"
    code = (
        "import sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({mlflow_server!r})\n"
        f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        f"df = pd.read_csv({str(inputs)!r}, dtype=str, keep_default_na=False)\n"
        "res = m.predict(df[['ct', 'mri', 'note']])\n"
        "res.insert(0, 'patient', df['patient'].values)\n"
        f"res.to_csv({str(out)!r}, index=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = pd.read_csv(out).merge(table, on="patient", suffixes=("", "_logged"))
    assert len(got) == len(table) > 0
    pd.testing.assert_series_equal(
        got["probability"], got["probability_logged"], check_names=False, atol=1e-4
    )
    assert (got["rejected"].fillna("") == "").all()


def test_postgresql_backend_store(prepared_cohort: Path, mlflow_server_pg: str, tmp_path):
    from mlflow import MlflowClient

    summary = json.loads(clinfuse(
        "train", str(prepared_cohort), "--config", "tiny", "--fusion", "concat",
        "--experiment", "e2e-pg", "--register", "e2e-pg-model", "--set", "train.max_epochs=1",
        "--set", "train.n_boot=20", "--workdir", str(tmp_path), "--json",
        tracking_uri=mlflow_server_pg, cwd=tmp_path,
    ).stdout)
    client = MlflowClient(mlflow_server_pg)
    version = client.get_model_version_by_alias("e2e-pg-model", "challenger")
    assert str(version.version) == str(summary["challenger_version"])
    assert "test_auroc" in client.get_run(version.run_id).data.metrics


def test_phi_canary_over_mlflow(trained: dict, synthetic_cohort: Path,
                                mlflow_server_handle) -> None:
    phi = json.loads((synthetic_cohort / "phi.json").read_text())
    needles = {v for k in ("names", "dicom_names", "mrns", "birth_dates", "visit_dates",
                           "phones") for v in phi[k] if len(v) >= 5}
    needles |= {p for n in phi["names"] for p in n.replace(",", " ").split() if len(p) >= 5}
    manifest = pd.read_csv(synthetic_cohort / "manifest.csv", dtype=str)
    needles |= set(manifest["patient_id"])
    server_root = Path(mlflow_server_handle.log_path).parent
    files = [p for p in server_root.rglob("*") if p.is_file() and p.suffix != ".log"]
    files += [p for p in trained["work"].rglob("*") if p.is_file() and "raw_inputs" not in p.name
              and "pyfunc_out" not in p.name]
    assert any(p.suffix == ".db" for p in files), "MLflow's database was not found"
    blobs = {str(p): p.read_bytes() for p in files}
    blobs["cli"] = (trained["train"].stdout + trained["train"].stderr
                    + trained["compare"].stdout + trained["compare"].stderr).encode()
    leaks = [(n, k) for k, b in blobs.items() for n in needles if n.encode() in b]
    assert not leaks, leaks[:5]


def test_ddp_training_is_tracked_like_any_other(prepared_cohort: Path, mlflow_server: str,
                                                 tmp_path: Path) -> None:
    """`clinfuse train --ddp 2`: torchrun (gloo on CPU) trains, the parent process logs."""
    from mlflow import MlflowClient

    summary = json.loads(clinfuse(
        "train", str(prepared_cohort), "--config", "tiny", "--fusion", "concat", "--ddp", "2",
        "--experiment", "e2e-ddp", "--register", "e2e-ddp-model", "--set", "train.max_epochs=1",
        "--set", "train.n_boot=20", "--set", "cohort.modalities.note.encoder.model=tiny-random",
        "--workdir", str(tmp_path), "--json", tracking_uri=mlflow_server, cwd=tmp_path,
    ).stdout)
    fit = json.loads((Path(summary["run_folders"]) / "concat" / "fit.json").read_text())
    assert fit["world_size"] == 2
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("e2e-ddp-model", "challenger")
    assert str(version.version) == str(summary["challenger_version"])
    run = client.get_run(version.run_id)
    assert run.data.params["world_size"] == "2" and "test_auroc" in run.data.metrics
    assert (run.data.params["fusion"], run.data.params["modalities"]) == PLANNED["concat"]
    # logged by the same function as an in-process run: plots, card, explanations too
    assert _artifacts(client, version.run_id) >= LOGGED
    assert client.get_run(summary["parent_run_id"]).data.tags["clinfuse.ddp"] == "true"


def test_a_failed_variant_does_not_stop_the_others(
    prepared_cohort: Path, mlflow_server: str, tmp_path: Path
) -> None:
    """cross_attention with 3 heads over d_model 64 fails when its model is built; concat
    and the baselines still train, are logged and compared, and the CLI exits 1."""
    import os

    from mlflow import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "train", str(prepared_cohort), "--config",
         "tiny", "--fusion", "cross_attention", "--fusion", "concat", "--baselines",
         "--modalities", "ct,note", "--set", "model.fusion.heads=3",
         "--set", "train.max_epochs=1", "--set", "train.n_boot=20",
         "--set", "cohort.modalities.note.encoder.model=tiny-random",
         "--experiment", "e2e-fail", "--register", "e2e-fail-model", "--workdir",
         str(tmp_path), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500, check=False)
    assert proc.returncode == 1, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert set(summary["failed"]) == {"cross_attention"}
    assert "divisible" in summary["failed"]["cross_attention"]
    assert "error: variant cross_attention failed" in proc.stderr
    assert {v["variant"] for v in summary["variants"]} == {"concat", "unimodal_ct",
                                                           "unimodal_note"}
    client = MlflowClient(mlflow_server)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FAILED"
    assert parent.data.tags["clinfuse.failed_variants"] == "cross_attention"
    version = client.get_model_version_by_alias("e2e-fail-model", "challenger")
    assert str(version.version) == str(summary["challenger_version"])
    exp = client.get_experiment_by_name("e2e-fail")
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name: r.info.status for r in children} == {
        "concat": "FINISHED", "unimodal_ct": "FINISHED", "unimodal_note": "FINISHED"}
