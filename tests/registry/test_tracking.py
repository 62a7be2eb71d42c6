"""Tracker: URI resolution, params/metrics/artifacts, and the spool when the server dies."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from registry.tracking import (
    MAX_KEY_LEN,
    MAX_PARAM_VAL_LEN,
    Tracker,
    flatten_params,
    local_artifact_root,
    replay_spool,
    resolve_tracking_uri,
)
from tests.servers import ServerHandle, free_port, sqlite_uri, start_mlflow_server


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


# --------------------------------------------------------------------------- pure helpers
def test_resolve_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None, tmp_path / "w")
    assert uri == f"sqlite:////{str((tmp_path / 'w' / 'mlflow.db').resolve()).lstrip('/')}"
    assert uri.startswith("sqlite:////")  # absolute: four slashes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"


def test_flatten_params_dotted_keys_and_limits() -> None:
    flat = flatten_params(
        {
            "model": {"fusion": {"name": "cross_attention", "layers": 2}, "d_model": 64},
            "modalities": ["ct", "note"],
            "path": Path("/a/b"),
            "long": "x" * (MAX_PARAM_VAL_LEN + 50),
            "k" * 300: 1,
            "k" * 299: 2,
        }
    )
    assert flat["model.fusion.name"] == "cross_attention"
    assert flat["model.fusion.layers"] == "2"
    assert flat["model.d_model"] == "64"
    assert flat["modalities"] == '["ct", "note"]'
    assert flat["path"] == "/a/b"
    assert len(flat["long"]) == MAX_PARAM_VAL_LEN and flat["long"].endswith("...")
    long_keys = [k for k in flat if k.startswith("kkk")]
    assert len(long_keys) == 2 and all(len(k) <= MAX_KEY_LEN for k in long_keys)


def test_local_artifact_root_only_for_database_uris(tmp_path: Path) -> None:
    assert local_artifact_root("sqlite:////x.db", tmp_path) == tmp_path.resolve() / "mlartifacts"
    assert local_artifact_root("postgresql+psycopg2://u@h/db", tmp_path) is not None
    assert local_artifact_root("http://127.0.0.1:5000", tmp_path) is None


# --------------------------------------------------------------------------- embedded SQLite
def test_embedded_run_logs_everything(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # artifacts must land under the work dir, not ./mlruns
    with Tracker("embedded", "parent", workdir=workdir, flush_every=5) as tr:
        tr.log_params({"train": {"lr": 0.002, "epochs": 12}, "seed": 0})
        for step in range(12):
            tr.log_metrics({"train_loss": 1.0 / (step + 1), "val_auroc": step / 12}, step=step)
        tr.set_tags({"clinfuse.fusion": "concat"})
        tr.log_dict({"a": 1}, "config/resolved.json")
        tr.log_text("hello", "notes/readme.txt")
        tr.log_table(pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}), "preds")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        tr.log_figure(fig, "figures/line.png")
        plt.close(fig)
        tr.log_dataset_input("f" * 64, 120, name="cohort")
        with tr.child("unimodal_ct") as child:
            child.log_metrics({"test_auroc": 0.7}, step=0)
    assert tr.status == "finished" and child.status == "finished"
    assert tr.tracking_uri == f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    assert not (cwd / "mlruns").exists()
    assert (workdir / "mlartifacts").is_dir()

    client = _client(tr.tracking_uri)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.002"
    assert run.data.tags["clinfuse.fusion"] == "concat"
    assert run.data.tags["clinfuse.cohort_hash"] == "f" * 64
    assert run.data.tags["clinfuse.cohort_rows"] == "120"
    history = client.get_metric_history(tr.run_id, "train_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(12))
    arts = {a.path for a in client.list_artifacts(tr.run_id)}
    assert {"config", "notes", "tables", "figures"} <= arts
    csv = Path(client.download_artifacts(tr.run_id, "tables/preds.csv", str(tmp_path)))
    assert pd.read_csv(csv).to_dict("list") == {"x": [1, 2], "y": ["a", "b"]}
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.digest == ("f" * 64)[:36] and ds.dataset.name == "cohort"
    assert ds.tags[0].value == "training"
    child_run = client.get_run(child.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == tr.run_id
    assert child_run.data.metrics["test_auroc"] == pytest.approx(0.7)


def test_failed_block_marks_run_failed(workdir: Path) -> None:
    with pytest.raises(RuntimeError), Tracker("embedded", "boom", workdir=workdir) as tr:
        tr.log_metrics({"loss": 1.0}, step=0)
        raise RuntimeError("training bug")
    run = _client(tr.tracking_uri).get_run(tr.run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["loss"] == 1.0  # buffered metrics are flushed on the way out


def test_bad_request_still_raises(workdir: Path) -> None:
    """Only unreachability degrades; a wrong call (param changed) is a bug and raises."""
    from mlflow.exceptions import MlflowException

    with Tracker("embedded", "bad", workdir=workdir) as tr:
        tr.log_params({"lr": 1})
        with pytest.raises(MlflowException):
            tr.log_params({"lr": 2})
        assert tr.status == "active"


# --------------------------------------------------------------------------- resilience
@pytest.mark.slow
def test_server_dies_mid_run_then_replay(tmp_path: Path, workdir: Path) -> None:
    db, arts = tmp_path / "srv" / "mlflow.db", tmp_path / "srv" / "artifacts"
    db.parent.mkdir()
    server: ServerHandle = start_mlflow_server(sqlite_uri(db), arts, tmp_path / "srv1.log")
    port = int(server.extra["port"])
    try:
        tr = Tracker("resilience", "train", tracking_uri=server.url, workdir=workdir, flush_every=5)
        tr.start()
        tr.log_params({"lr": 0.01})
        for step in range(5):  # flushed while the server is up
            tr.log_metrics({"loss": 10.0 - step}, step=step)
        server.stop()  # the server goes away mid-run

        for step in range(5, 20):  # training carries on
            tr.log_metrics({"loss": 10.0 - step}, step=step)
        tr.log_params({"epochs_done": 20})
        tr.log_text("late note", "notes/late.txt")
        tr.log_dataset_input("abc123", 7)
        tr.finish()
        assert tr.status == "degraded"
        assert tr.spool_dir is not None and (tr.spool_dir / "events.jsonl").exists()
        meta = json.loads((tr.spool_dir / "run.json").read_text())
        assert meta["run_id"] == tr.run_id

        # The server comes back on the same backend and address; replay the spool.
        server = start_mlflow_server(sqlite_uri(db), arts, tmp_path / "srv2.log", port=port)
        (replayed,) = replay_spool(workdir / "mlflow-spool", server.url)
        assert replayed == tr.run_id
        client = _client(server.url)
        run = client.get_run(tr.run_id)
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(tr.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(20))
        assert {m.step: m.value for m in history}[19] == -9.0
        assert run.data.params == {"lr": "0.01", "epochs_done": "20"}
        assert run.data.tags["clinfuse.cohort_hash"] == "abc123"
        assert [a.path for a in client.list_artifacts(tr.run_id, "notes")] == ["notes/late.txt"]
        # Replaying again is a no-op (marker file), not a duplicate.
        assert replay_spool(workdir / "mlflow-spool", server.url) == [tr.run_id]
        assert len(client.get_metric_history(tr.run_id, "loss")) == 20
    finally:
        server.stop()


def test_server_down_from_the_start_spools_and_replays_into_new_run(workdir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Tracker("offline", "cold", tracking_uri=dead, workdir=workdir, flush_every=2) as tr:
        assert tr.status == "degraded" and tr.run_id is None
        tr.log_params({"model": {"d_model": 64}})
        for step in range(3):
            tr.log_metrics({"val_auroc": 0.5 + step / 10}, step=step)
    assert tr.status == "degraded"

    target = sqlite_uri(workdir / "later.db")
    (run_id,) = replay_spool(tr.spool_dir, target)
    client = _client(target)
    run = client.get_run(run_id)
    assert run.info.run_name == "cold" and run.info.status == "FINISHED"
    assert run.data.params["model.d_model"] == "64"
    assert len(client.get_metric_history(run_id, "val_auroc")) == 3
    assert client.get_experiment(run.info.experiment_id).name == "offline"


def test_a_run_resumed_from_its_handle_is_the_same_run(workdir: Path) -> None:
    """The train flow starts the parent in one task and ends it in another."""
    opened = Tracker("embedded", "parent", workdir=workdir).start()
    opened.log_params({"variants": "a,b"})
    handle = json.loads(json.dumps(opened.handle()))  # plain data: what a task passes on
    assert "tracking_uri" not in handle
    later = Tracker.resume(handle, workdir=workdir)
    later.log_metrics({"n": 2.0})
    later.finish("FAILED")
    run = _client(later.tracking_uri).get_run(opened.run_id)
    assert later.run_id == opened.run_id and run.info.status == "FAILED"
    assert run.data.params["variants"] == "a,b" and run.data.metrics["n"] == 2.0


def test_a_spooled_run_resumed_keeps_spooling_into_its_folder(workdir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    opened = Tracker("offline", "parent", tracking_uri=dead, workdir=workdir).start()
    opened.log_text("first", "a.txt")
    later = Tracker.resume(opened.handle(), tracking_uri=dead, workdir=workdir)
    assert later.status == "degraded" and later.spool_dir == opened.spool_dir
    later.log_text("second", "b.txt")
    later.finish()
    target = sqlite_uri(workdir / "later.db")
    (run_id,) = replay_spool(opened.spool_dir, target)
    client = _client(target)
    assert {a.path for a in client.list_artifacts(run_id)} == {"a.txt", "b.txt"}
    assert client.get_run(run_id).info.status == "FINISHED"


def test_importing_registry_does_not_import_mlflow() -> None:
    """`clinfuse --help` imports registry modules; mlflow (seconds to import) must stay out."""
    import subprocess
    import sys

    code = (
        "import sys, registry, registry.tracking, registry.model, registry.compare\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported at module level'\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
