"""Pickle-free pyfunc models: builder validation, safetensors, registration, fresh-process load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from modalities.errors import ConfigError
from registry.model import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION_TAG,
    REFERENCE_BUILDER,
    _linear_reference_builder,
    build_predictor,
    current_alias_version,
    load_pyfunc,
    log_model,
    promote,
    resolve_builder,
    save_weights,
)
from registry.tracking import Tracker, replay_spool, using_tracking_uri
from tests.servers import free_port, sqlite_uri

REPO = Path(__file__).resolve().parents[2]
FEATURES = ["age_z", "lab_a", "lab_b"]
PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt"}


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"age_z": [0.1, -1.2, 0.7], "lab_a": [1.0, 2.0, -0.5], "lab_b": [3.0, -1.0, 0.25]}
    )


def _predictor(seed: int = 0):
    torch.manual_seed(seed)
    return _linear_reference_builder({"features": FEATURES})


def _assert_no_pickles(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert p.suffix not in PICKLE_SUFFIXES, p
        head = p.read_bytes()[:2]
        # Pickle protocol 2+ starts with 0x80 followed by the protocol number.
        assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), p
    names = {p.name for p in files}
    assert {"weights.safetensors", "config.json", "MLmodel"} <= names
    assert "python_model.pkl" not in names


# --------------------------------------------------------------------------- builders
@pytest.mark.parametrize(
    "spec",
    ["os:system", "builtins:eval", "subprocess:run", "not a spec", "registry.model", "a:b:c"],
)
def test_builder_outside_clinfuse_or_malformed_is_rejected(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_builder(spec)
    assert spec.split(":")[0] in str(err.value) or "form" in str(err.value)


def test_builder_missing_function_or_module() -> None:
    with pytest.raises(ConfigError, match="no function"):
        resolve_builder("registry.model:does_not_exist")
    with pytest.raises(ConfigError, match="cannot be imported"):
        resolve_builder("fusion.no_such_module:build")


def test_reference_builder_resolves_and_predicts() -> None:
    assert resolve_builder(REFERENCE_BUILDER) is _linear_reference_builder
    out = _predictor().predict_dataframe(_frame())
    assert list(out.columns) == ["logit", "probability"] and len(out) == 3
    assert ((out["probability"] > 0) & (out["probability"] < 1)).all()
    with pytest.raises(ConfigError, match="missing columns"):
        _predictor().predict_dataframe(_frame().drop(columns=["lab_b"]))


def test_builder_must_return_a_predictor() -> None:
    with pytest.raises(ConfigError, match="predict_dataframe"):
        build_predictor({"builder": "registry.tracking:flatten_params", "config": {}}, None)


def test_safetensors_roundtrip_with_tied_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    lin = torch.nn.Linear(4, 4)
    state = {"a.weight": lin.weight, "b.weight": lin.weight, "a.bias": lin.bias}  # tied
    state["t"] = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous
    save_weights(state, tmp_path / "w.safetensors")
    back = load_file(str(tmp_path / "w.safetensors"))
    for k, v in state.items():
        assert torch.equal(back[k], v.detach()), k


# --------------------------------------------------------------------------- embedded store
def test_log_register_load_promote_embedded(workdir: Path, tmp_path: Path) -> None:
    import mlflow

    pred, df = _predictor(), _frame()
    expected = pred.predict_dataframe(df)
    with Tracker("models", "lin", workdir=workdir) as tr:
        info = log_model(
            tr,
            pred.model.state_dict(),
            {"features": FEATURES},
            input_example=df,
            registered_name="ref_lin",
        )
    assert info.registered_model_version == 1
    uri = tr.tracking_uri
    assert current_alias_version("ref_lin", CHALLENGER, uri) == "1"

    # download_artifacts(tracking_uri=...) does not reach the models:/ resolver: use the global.
    with using_tracking_uri(tr.tracking_uri):
        local = Path(
            mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "m"))
        )
    _assert_no_pickles(local)
    cfg = json.loads((local / "artifacts" / "config.json").read_text())
    assert cfg["builder"] == REFERENCE_BUILDER and cfg["config"]["features"] == FEATURES
    mlmodel = (local / "MLmodel").read_text()
    # A model from code: MLflow's code loader, no pickled python_model entry.
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel
    assert "model_code_path" in mlmodel and "python_model:" not in mlmodel

    loaded = load_pyfunc("models:/ref_lin@challenger", tracking_uri=uri)
    pd.testing.assert_frame_equal(loaded.predict(df), expected, check_dtype=False)

    # A second model version; promote v1 then v2 and check the recorded previous champion.
    with Tracker("models", "lin2", workdir=workdir) as tr2:
        info2 = log_model(
            tr2, _predictor(1).model.state_dict(), {"features": FEATURES}, registered_name="ref_lin"
        )
    assert info2.registered_model_version == 2
    assert current_alias_version("ref_lin", CHALLENGER, uri) == "2"
    assert promote("ref_lin", 1, tracking_uri=uri) is None
    assert promote("ref_lin", 2, tracking_uri=uri) == "1"
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("ref_lin", CHAMPION).version) == "2"
    assert client.get_model_version("ref_lin", "2").tags[PREVIOUS_CHAMPION_TAG] == "1"
    assert client.get_registered_model("ref_lin").tags[PREVIOUS_CHAMPION_TAG] == "1"


def test_degraded_tracker_spools_model_and_replay_uploads_it(workdir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    pred, df = _predictor(), _frame()
    with Tracker("offline-models", "cold", tracking_uri=dead, workdir=workdir) as tr:
        assert log_model(tr, pred.model.state_dict(), {"features": FEATURES}) is None
    _assert_no_pickles(tr.spool_dir / "models" / "model")

    target = sqlite_uri(workdir / "later.db")
    (run_id,) = replay_spool(tr.spool_dir, target)
    loaded = load_pyfunc(f"runs:/{run_id}/model", tracking_uri=target)
    pd.testing.assert_frame_equal(loaded.predict(df), pred.predict_dataframe(df), check_dtype=False)


# --------------------------------------------------------------------------- real server
@pytest.mark.slow
def test_server_model_loads_in_a_fresh_process(mlflow_server: str, workdir: Path) -> None:
    pred, df = _predictor(3), _frame()
    expected = pred.predict_dataframe(df)
    with Tracker("server-models", "lin", tracking_uri=mlflow_server, workdir=workdir) as tr:
        info = log_model(
            tr,
            pred.model.state_dict(),
            {"features": FEATURES},
            input_example=df.head(2),
            registered_name="server_lin",
        )
    version = str(info.registered_model_version)
    assert current_alias_version("server_lin", CHALLENGER, mlflow_server) == version
    # Logging to a server must not leave it as everyone's default (mlflow sets the env var).
    assert "MLFLOW_TRACKING_URI" not in os.environ

    code = (
        "import io, sys, mlflow.pyfunc, pandas as pd\n"
        "df = pd.read_json(io.StringIO(sys.stdin.read()), orient='split')\n"
        "m = mlflow.pyfunc.load_model('models:/server_lin@challenger')\n"
        "print(m.predict(df).to_json(orient='split'))\n"
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=df.to_json(orient="split"),
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from io import StringIO

    got = pd.read_json(StringIO(proc.stdout.strip().splitlines()[-1]), orient="split")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, atol=1e-6)
