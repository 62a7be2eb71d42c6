"""Shared test set-up: offline, quiet, isolated Prefect home, a demo pseudonym key."""

from __future__ import annotations

import os

os.environ.setdefault("CLINFUSE_PSEUDONYM_KEY", "test-key-0123456789abcdef")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")
# CLI subprocesses run as users run them: one shared Prefect server per PREFECT_HOME (the
# session's, or a test's own), started by the first command and reused by the next ones.
# Ephemeral mode cost every CLI call its own server start (10-28 s on 2 cores); each test's
# servers are stopped by PID when its module ends (_stop_prefect_servers_a_module_started).
os.environ.setdefault("CLINFUSE_PREFECT_SERVER", "shared")

import tempfile

if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="clinfuse-prefect-")

import torch

torch.set_num_threads(1)  # tiny models: threads cost more than they give on 2 cores


# --------------------------------------------------------------------------- real servers
# Session-scoped (start-up costs ~10 s on 2 cores), stopped by PID at the end; tests isolate
# themselves by experiment and model names.
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.servers import (  # noqa: E402
    ServerHandle,
    postgres_available,
    postgres_database,
    sqlite_uri,
    start_mlflow_server,
)


def clinfuse_server_homes() -> set[Path]:
    """PREFECT_HOMEs whose clinfuse shared Prefect server runs now (read from /proc)."""
    from workflows.prefect_server import APP, read_state

    homes: set[Path] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if APP.encode() not in (proc / "cmdline").read_bytes():
                continue
            env = dict(
                item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )
        except OSError:
            continue  # gone, or not ours to read
        home = Path(os.fsdecode(env.get(b"PREFECT_HOME", b"")))
        state = read_state(home) if home.name else None
        if state is not None and int(state["pid"]) == int(proc.name):
            homes.add(home)
    return homes


@pytest.fixture(scope="session", autouse=True)
def _no_shared_prefect_server_left() -> Iterator[None]:
    """Stop the session's shared Prefect server (and any other clinfuse started) at the end."""
    yield
    from workflows.prefect_server import stop_server

    stop_server()
    for home in clinfuse_server_homes():
        stop_server(home)


@pytest.fixture(scope="module", autouse=True)
def _stop_prefect_servers_a_module_started() -> Iterator[None]:
    """A test's own PREFECT_HOME gets its own shared server: stop it (by PID) when the test
    module ends (module fixtures share homes across tests), so servers do not pile up
    (~240 MB each) over the session."""
    from workflows.prefect_server import stop_server

    before = clinfuse_server_homes() | {Path(os.environ["PREFECT_HOME"])}
    yield
    for home in clinfuse_server_homes() - before:
        stop_server(home)


@pytest.fixture(scope="session")
def mlflow_server_handle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts, one worker)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    handle = start_mlflow_server(
        sqlite_uri(root / "mlflow.db"), root / "artifacts", root / "server.log"
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_handle: ServerHandle) -> str:
    """Tracking URI (``http://127.0.0.1:PORT``) of the session's SQLite-backed server."""
    return mlflow_server_handle.url


@pytest.fixture(scope="session")
def mlflow_server_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tracking URI of a server whose backend store is a fresh PostgreSQL database."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    root = tmp_path_factory.mktemp("mlflow-server-pg")
    with postgres_database("clinfuse_mlflow") as db_uri:
        handle = start_mlflow_server(db_uri, root / "artifacts", root / "server.log")
        try:
            yield handle.url
        finally:
            handle.stop()


