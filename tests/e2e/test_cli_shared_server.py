"""The CLI's shared local Prefect server, progress output and modality selection, end to end.

Commands run as real subprocesses against one PREFECT_HOME in shared mode: the first one
starts the server, the next ones reuse it (same PID), ``clinfuse server stop`` stops it by
PID. On the way: a cohort whose manifest has no MRI column is ingested with
``--modalities ct,note`` and trained, with ``--progress`` forcing the per-input and
per-epoch lines on, and a ``ClinfuseError`` raised inside a flow is logged by Prefect as
one line.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from synth import synth_cohort
from workflows.prefect_server import _alive, read_state, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("shared-prefect")
    yield home
    state = stop_server(home)  # safety net when a test failed before `server stop`
    if state is not None:
        assert not _alive(state["pid"])


def cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(home), "CLINFUSE_PREFECT_SERVER": "shared"}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=900, check=False)


def test_shared_server_progress_and_modality_selection(home: Path, tmp_path: Path) -> None:
    synth_cohort(tmp_path / "s", patients=16, seed=4)
    manifest = pd.read_csv(tmp_path / "s" / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.drop(columns=["mri"]).to_csv(tmp_path / "s" / "no_mri.csv", index=False)
    prepared = tmp_path / "prepared"
    ingest = ["ingest", str(tmp_path / "s" / "no_mri.csv"), "--out", str(prepared),
              "--config", "tiny", "--modalities", "ct,note", "--progress", "--json"]

    first = cli(*ingest, home=home, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["quarantined"] == 0 and summary["inputs"] > 16
    assert f"ingest: {summary['inputs']}/{summary['inputs']}" in first.stderr
    cols = pd.read_parquet(prepared / "cohort.parquet").columns
    assert "ct_status" in cols and "note_status" in cols and "mri_status" not in cols
    server = read_state(home)
    assert server is not None and _alive(server["pid"])

    t0 = time.perf_counter()
    again = cli(*ingest, home=home, cwd=tmp_path)
    cached_s = time.perf_counter() - t0
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["cached"] == summary["accepted"]
    assert read_state(home)["pid"] == server["pid"]  # reused, not restarted
    print(f"cached ingest with a warm shared server: {cached_s:.1f} s")

    train = cli("train", str(prepared), "--config", "tiny", "--modalities", "ct,note",
                "--fusion", "concat", "--set", "train.max_epochs=2", "--set", "train.n_boot=0",
                "--set", "train.patience=5",
                "--workdir", str(tmp_path / "work"), "--progress", "--json",
                home=home, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    lines = [ln for ln in train.stderr.splitlines() if ln.startswith("train concat: ")]
    assert lines[0].startswith("train concat: 1/2  epoch 1/2 loss "), lines
    assert "val_auroc " in lines[0] and "epoch 2/2" in lines[1]
    variants = json.loads(train.stdout)["variants"]
    assert [v["modalities"] for v in variants] == ["ct+note"]
    assert read_state(home)["pid"] == server["pid"]


def test_user_error_inside_a_flow_is_one_log_line(home: Path, tmp_path: Path) -> None:
    """A ClinfuseError raised in a task: no traceback in Prefect's logs, printed once."""
    script = textwrap.dedent("""
        from workflows.prefect_server import ensure_server
        ensure_server()
        from prefect import flow, task
        from modalities.errors import ConfigError
        from workflows.runtime import quiet_user_errors
        quiet_user_errors()

        @task
        def check():
            raise ConfigError("the val split is empty (3 usable labeled patients)")

        @flow
        def demo_flow():
            check()

        try:
            demo_flow()
        except ConfigError as err:
            print("error:", err)
        from prefect.logging.handlers import APILogHandler
        APILogHandler().flush()
        import time; time.sleep(1)
        from prefect.client.orchestration import get_client
        with get_client(sync_client=True) as client:
            logs = [log.message for log in client.read_logs()]
        print("LOGS", len(logs), sum("Traceback" in m for m in logs),
              sum("val split is empty" in m for m in logs))
    """)
    env = {**os.environ, "PREFECT_HOME": str(home), "CLINFUSE_PREFECT_SERVER": "shared",
           "PREFECT_LOGGING_LEVEL": "WARNING"}  # the CLI's level
    env.pop("PREFECT_API_URL", None)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    text = res.stdout + res.stderr
    assert text.count("val split is empty") == 1, text  # printed once: the console is quiet
    _, n_tracebacks, n_mentions = map(int, res.stdout.split("LOGS")[1].split())
    assert n_tracebacks == 0 and n_mentions >= 1  # Prefect keeps it, one line per record


def test_server_stop_stops_it_by_pid(home: Path, tmp_path: Path) -> None:
    state = read_state(home)
    if state is None:
        pytest.skip("no shared server was started in this module")
    res = cli("server", "stop", "--json", home=home, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"stopped": True, "pid": state["pid"]}
    assert not _alive(state["pid"]) and read_state(home) is None
    status = json.loads(cli("server", "status", "--json", home=home, cwd=tmp_path).stdout)
    assert status["running"] is False and status["mode"] == "shared"


def test_a_server_killed_mid_command_is_restarted_and_the_command_finishes(
    tmp_path: Path,
) -> None:
    """The shared server dies while an ingest runs (OOM, a stray kill): the command's
    watchdog restarts it on the same port and the flow finishes, recorded as COMPLETED."""
    synth_cohort(tmp_path / "s", patients=60, seed=6)
    home = tmp_path / "home"
    env = {**os.environ, "PREFECT_HOME": str(home), "CLINFUSE_PREFECT_SERVER": "shared"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workflows.cli", "ingest", str(tmp_path / "s" / "manifest.csv"),
         "--out", str(tmp_path / "prepared"), "--config", "tiny", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while read_state(home) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        first = read_state(home)
        assert first is not None, "the command did not start a shared server"
        time.sleep(2)  # the ingest flow is under way
        os.kill(first["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out)["inputs"] > 60
        now = read_state(home)
        assert now is not None and now["pid"] != first["pid"] and now["port"] == first["port"]
        assert _alive(now["pid"])
        db = sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True)
        states = [r[0] for r in db.execute("SELECT state_type FROM flow_run")]
        db.close()
        assert states == ["COMPLETED"], states
    finally:
        stop_server(home)


def test_a_server_stopped_on_purpose_is_not_restarted_by_a_running_command(
    tmp_path: Path,
) -> None:
    """``clinfuse server stop`` while another command runs: its watchdog lets it stay down."""
    home = tmp_path / "home"
    env = {**os.environ, "PREFECT_HOME": str(home), "CLINFUSE_PREFECT_SERVER": "shared"}
    env.pop("PREFECT_API_URL", None)
    script = ("from workflows.prefect_server import ensure_server\nimport time\n"
              "ensure_server()\nprint('up', flush=True)\ntime.sleep(8)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        state = stop_server(home)
        assert state is not None and not _alive(state["pid"])
        assert proc.wait(timeout=60) == 0  # several watchdog rounds went by
        assert read_state(home) is None
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_server(home)
