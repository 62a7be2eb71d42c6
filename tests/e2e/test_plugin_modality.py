"""A modality from a plugin package: ingest and train through the real CLI, no clinfuse edit.

``tests/plugins`` holds ``clinfuse_ecg`` (a toy ``ecg`` modality) and its
``clinfuse_ecg-0.1.dist-info`` (METADATA + entry_points.txt): with that folder on
``PYTHONPATH``, ``importlib.metadata`` finds the entry point exactly as it would for a
pip-installed plugin. A second, broken plugin is installed alongside: it must fail with a
one-line error naming it when used, and must not disturb commands that do not use it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"
pytestmark = pytest.mark.slow

RECIPE = """\
name: ecg-plugin
cohort:
  modalities:
    ecg: {spec: {length: 128}, encoder: {width: 8, out_dim: 16}}
    tabular: {spec: {features: [heart_rate, lactate]}, encoder: {out_dim: 16, hidden: 32}}
model: {d_model: 16, fusion: {name: concat, layers: 1, heads: 2}}
train: {max_epochs: 2, min_epochs: 1, batch_size: 8, num_workers: 0, n_boot: 20}
"""


def write_cohort(root: Path, n: int = 40) -> Path:
    """Patients with an ecg trace (CSV or NPY, the label sets its amplitude) and labs."""
    rng = np.random.default_rng(0)
    (root / "ecg").mkdir(parents=True)
    rows = []
    for i in range(n):
        label = i % 2
        sig = np.sin(np.linspace(0, 20, 200)) * (1 + 2 * label) + rng.normal(0, 0.1, 200)
        if i % 3 == 0:
            path = f"ecg/p{i}.npy"
            np.save(root / path, sig)
        else:
            path = f"ecg/p{i}.csv"
            np.savetxt(root / path, sig, delimiter=",")
        labs = json.dumps({"heart_rate": 60 + 30 * rng.random(), "lactate": 1 + rng.random()})
        split = "train" if i < 24 else ("val" if i < 32 else "test")
        rows.append({"patient_id": f"P{i:03d}", "ecg": path, "tabular": labs,
                     "label": label, "split": split})
    (root / "ecg" / "bad.csv").write_text("1,2\nnot,a,number\n")
    rows.append({"patient_id": "P999", "ecg": "ecg/bad.csv", "tabular": "", "label": 1,
                 "split": "train"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def broken_plugin(root: Path) -> Path:
    """A plugin whose entry point names a module that does not exist."""
    info = root / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken_plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clinfuse.modalities]\nbroken = no_such_module_x\n")
    return root


def cli(*args: str, cwd: Path, extra_path: Path) -> subprocess.CompletedProcess[str]:
    path = [str(REPO), str(PLUGINS), str(extra_path), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p),
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "workflows.cli", *args], capture_output=True, text=True,
        env=env, cwd=cwd, timeout=900, check=False,
    )


def test_plugin_modality_ingests_and_trains(tmp_path: Path) -> None:
    manifest = write_cohort(tmp_path / "data")
    recipe = tmp_path / "ecg.yaml"
    recipe.write_text(RECIPE)
    broken = broken_plugin(tmp_path / "site")
    prepared = tmp_path / "prepared"
    ingest = cli("ingest", str(manifest), "--out", str(prepared), "--config", str(recipe),
                 "--json", cwd=tmp_path, extra_path=broken)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    frame = pd.read_parquet(prepared / "cohort.parquet")
    assert (frame["ecg_status"] == "ok").sum() == 40
    quarantine = pd.read_parquet(prepared / "quarantine.parquet")
    assert list(quarantine["modality"]) == ["ecg"]
    assert list(quarantine["code"]) == ["UNREADABLE"]

    train = cli("train", str(prepared), "--config", str(recipe), "--baselines",
                "--workdir", str(tmp_path / "work"), "--json", cwd=tmp_path, extra_path=broken)
    assert train.returncode == 0, train.stderr[-3000:]
    variants = {v["variant"]: v for v in json.loads(train.stdout)["variants"]}
    assert {"concat", "unimodal_ecg", "unimodal_tabular"} <= set(variants)
    assert 0.0 <= variants["unimodal_ecg"]["auroc"] <= 1.0


def test_broken_plugin_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    manifest = write_cohort(tmp_path / "data", n=4)
    pd.read_csv(manifest).assign(broken="x").to_csv(manifest, index=False)
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(RECIPE.replace("ecg: {spec", "broken: {}\n    ecg: {spec"))
    res = cli("ingest", str(manifest), "--out", str(tmp_path / "p"), "--config", str(recipe),
              cwd=tmp_path, extra_path=broken_plugin(tmp_path / "site"))
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "plugin 'broken'" in err and "broken_plugin 0.1" in err
    assert "ModuleNotFoundError" in err
