"""Secrets stay out of Prefect: no flow takes a database URL, deployments carry none even
when the worker's environment holds one, URLs with passwords are refused as parameters,
and the URL is resolved where the task runs (environment or a Prefect Secret block)."""

from __future__ import annotations

import inspect
import json
import os

import pytest

from modalities.errors import ConfigError
from workflows.nightly import nightly_flow
from workflows.score import DB_URL_ENV, _env_var, refuse_credentials, resolve_db_url, score_flow

# what tests/conftest.py gives every ephemeral server (the harness defaults to 30 s)
STARTUP_TIMEOUT_S = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
CANARY_URL = "postgresql+psycopg2://clinfuse:canary-pw-9d2e@postgres:5432/clinfuse"


@pytest.mark.parametrize("flow", [score_flow, nightly_flow], ids=["score", "nightly"])
def test_no_flow_takes_a_database_url(flow) -> None:
    params = set(inspect.signature(flow.fn).parameters)
    assert not {"db_url", "password", "db_password"} & params
    assert not [p for p in params if p.endswith("_url") and p != "tracking_uri"]


def test_deployments_carry_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from workflows.serve import build_deployments

    monkeypatch.setenv(DB_URL_ENV, CANARY_URL)
    for dep in build_deployments("tiny"):
        assert "canary-pw" not in json.dumps(dep.parameters, default=str), dep.name


def test_url_with_password_is_refused_as_a_parameter() -> None:
    with pytest.raises(ConfigError, match="contains a password"):
        refuse_credentials("http://worker:s3cret@mlflow:5000", "tracking_uri")
    refuse_credentials("http://mlflow:5000", "tracking_uri")
    refuse_credentials(None, "tracking_uri")


def test_db_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_DB", CANARY_URL)
    assert resolve_db_url("SITE_DB") == CANARY_URL
    assert resolve_db_url(None) is None
    monkeypatch.delenv("SITE_DB")
    assert resolve_db_url("SITE_DB") is None  # unset: Parquet only


def test_cli_db_url_is_exported_for_the_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    with _env_var(DB_URL_ENV, CANARY_URL):
        assert os.environ[DB_URL_ENV] == CANARY_URL
    assert DB_URL_ENV not in os.environ
    monkeypatch.setenv(DB_URL_ENV, "postgresql://before@h/db")
    with _env_var(DB_URL_ENV, CANARY_URL):
        pass
    assert os.environ[DB_URL_ENV] == "postgresql://before@h/db"


@pytest.mark.slow
def test_db_url_from_a_prefect_secret_block() -> None:
    from prefect.blocks.system import Secret
    from prefect.testing.utilities import prefect_test_harness

    # the harness's own 30 s start-up limit failed once in CI on 2 busy cores
    with prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_S):
        Secret(value=CANARY_URL).save("clinfuse-db-url")
        assert resolve_db_url(DB_URL_ENV, "clinfuse-db-url") == CANARY_URL
        with pytest.raises(ConfigError, match="not found"):
            resolve_db_url(DB_URL_ENV, "no-such-block")
