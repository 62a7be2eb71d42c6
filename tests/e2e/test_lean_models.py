"""Every version `clinfuse train --register` left on the server is lean: the frozen MiniLM
is stored by reference, so a tiny-recipe version is well under 5 MB (issue 13)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.slow

MAX_VERSION_BYTES = 5 * 1024 * 1024


def _size(repo, path: str | None = None) -> int:
    total = 0
    for item in repo.list_artifacts(path):
        total += _size(repo, item.path) if item.is_dir else int(item.file_size or 0)
    return total


def test_registered_tiny_versions_are_under_5_mb(trained: dict, mlflow_server: str) -> None:
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from registry.model import _model_artifact_location
    from registry.tracking import using_tracking_uri

    client = MlflowClient(mlflow_server)
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 5
    sizes = {}
    with using_tracking_uri(mlflow_server):
        for mv in versions:
            repo = get_artifact_repository(_model_artifact_location(client, mv))
            sizes[mv.version] = _size(repo)
    assert all(0 < s < MAX_VERSION_BYTES for s in sizes.values()), sizes
    print("registered version sizes (bytes):", sizes)
