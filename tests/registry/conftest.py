"""Registry tests use the session's real MLflow servers (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


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
