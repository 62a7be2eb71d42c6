"""Code-free, pickle-free pyfunc models: builder validation, safetensors, registration,
verified loading (tampered files refused, stored code never run), fresh-process load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from modalities.errors import ClinfuseError, ConfigError
from registry.model import (
    CHALLENGER,
    CHAMPION,
    CONFIG_TAG,
    PREVIOUS_CHAMPION_TAG,
    REFERENCE_BUILDER,
    WEIGHTS_TAG,
    ModelIntegrityError,
    _linear_reference_builder,
    build_predictor,
    current_alias_version,
    load_predictor,
    load_pyfunc,
    log_model,
    promote,
    register_model,
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
    # No code is stored with a model: MLflow imports the installed loader module.
    assert not [p for p in files if p.suffix in (".py", ".pyc")], files


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
    cfg = json.loads((local / "data" / "clinfuse" / "config.json").read_text())
    assert cfg["builder"] == REFERENCE_BUILDER and cfg["config"]["features"] == FEATURES
    mlmodel = (local / "MLmodel").read_text()
    # An installed loader module, no stored entry file, no pickled python_model.
    assert "loader_module: registry.model_format" in mlmodel
    assert "model_code_path" not in mlmodel and "python_model" not in mlmodel
    # The input example was given; the signature comes from the builder's example_io hook.
    assert info.signature is not None
    assert [c.name for c in info.signature.inputs.inputs] == FEATURES
    assert (local / "input_example.json").exists()
    from mlflow import MlflowClient

    tags = MlflowClient(uri).get_model_version("ref_lin", "1").tags
    assert len(tags[WEIGHTS_TAG]) == 64 and len(tags[CONFIG_TAG]) == 64

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
    # Registered by hand afterwards, it is still verified: the hashes were spooled as run tags.
    register_model(f"runs:/{run_id}/model", "spooled_lin", tracking_uri=target)
    got, name, version = load_predictor("models:/spooled_lin@challenger", target)
    assert (name, version) == ("spooled_lin", "1")
    pd.testing.assert_frame_equal(
        got.predict_dataframe(df), pred.predict_dataframe(df), check_dtype=False
    )


# --------------------------------------------------------------------------- integrity
def _registered(workdir: Path, name: str) -> tuple[str, Path, pd.DataFrame]:
    """Register the reference model in an embedded store; (uri, model folder, expected)."""
    pred, df = _predictor(5), _frame()
    with Tracker("integrity", name, workdir=workdir) as tr:
        log_model(tr, pred.model.state_dict(), {"features": FEATURES}, registered_name=name)
    (folder,) = {p.parent for p in (workdir / "mlartifacts").rglob("MLmodel")}
    return tr.tracking_uri, folder, pred.predict_dataframe(df)


def test_load_predictor_ignores_stored_code_and_mlmodel(workdir: Path) -> None:
    uri, folder, expected = _registered(workdir, "tamper_code")
    marker = workdir / "stored-code-ran"
    # An attacker with write access to the artifact store adds an entry file and points
    # MLmodel at it (MLflow's "model from code" loader would execute it) and at a pickle.
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (folder / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.loaders.code_model\n"
        "    model_code_path: evil.py\n    python_model: python_model.pkl\n"
    )
    pred, name, version = load_predictor("models:/tamper_code@challenger", uri)
    assert not marker.exists() and (name, version) == ("tamper_code", "1")
    pd.testing.assert_frame_equal(pred.predict_dataframe(_frame()), expected, check_dtype=False)


@pytest.mark.parametrize("fname", ["weights.safetensors", "config.json"])
def test_load_predictor_refuses_changed_files(workdir: Path, fname: str) -> None:
    uri, folder, _ = _registered(workdir, "tamper_files")
    target = folder / "data" / "clinfuse" / fname
    if fname == "config.json":  # a plausible edit: still valid JSON, other features
        target.write_text(target.read_text().replace("lab_b", "lab_c"))
    else:  # same size, one byte of a tensor changed
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError) as err:
        load_predictor("models:/tamper_files@challenger", uri)
    msg = str(err.value)
    assert isinstance(err.value, ClinfuseError) and "\n" not in msg
    assert "tamper_files v1" in msg and fname in msg and "SHA-256" in msg


def test_load_predictor_refuses_a_version_without_recorded_hashes(workdir: Path) -> None:
    """A version registered by plain MLflow (no clinfuse hash tags) is not trusted."""
    import mlflow
    from mlflow import MlflowClient

    uri, _, _ = _registered(workdir, "no_hash")
    client = MlflowClient(uri)
    mv = client.get_model_version("no_hash", "1")
    with using_tracking_uri(uri):
        bare = mlflow.register_model(mv.source, "no_hash_copy")
    client.set_registered_model_alias("no_hash_copy", "champion", bare.version)
    # The copy still finds the LoggedModel's tags (the tracking DB), so it loads...
    load_predictor("models:/no_hash_copy@champion", uri)
    # ...but not once no tag is left anywhere in the tracking DB.
    model_id = mv.source.removeprefix("models:/")
    for tag in (WEIGHTS_TAG, CONFIG_TAG):
        client.delete_logged_model_tag(model_id, tag)
        client.delete_model_version_tag("no_hash", "1", tag)
    with pytest.raises(ModelIntegrityError, match="no recorded file hashes"):
        load_predictor("models:/no_hash_copy@champion", uri)


def test_importing_registry_turns_mlflow_pickle_loading_off() -> None:
    code = (
        "import registry, mlflow\n"
        "from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION as v\n"
        "print(v.get())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


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
