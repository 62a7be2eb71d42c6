"""Real MLflow servers for the registry tests: SQLite and PostgreSQL backends.

Both are session-scoped (start-up costs ~10 s on 2 cores) and stopped by PID at the end.
Tests isolate themselves by using their own experiment names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import (
    ServerHandle,
    postgres_available,
    postgres_database,
    sqlite_uri,
    start_mlflow_server,
)


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


@pytest.fixture(autouse=True)
def _no_ambient_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests name their tracking URI; an inherited MLFLOW_TRACKING_URI must not redirect them."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A per-test work dir (spool folders and local SQLite files go here)."""
    d = tmp_path / "work"
    d.mkdir()
    return d
