"""Resolve a registered model reference without loading the model or creating a store.

The CLI calls this before a scoring flow starts, so a typo in a model name or alias is one
line and exit code 2 instead of a failed flow run. A local SQLite store that does not exist
is reported as such (opening it with MLflow would create an empty ``mlflow.db``).
"""

from __future__ import annotations

from pathlib import Path

from modalities.errors import ConfigError


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0])


def require_store(tracking_uri: str | None, workdir: Path | str = ".") -> str:
    """The tracking URI; a local SQLite store must already exist (nothing is created)."""
    from registry.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, workdir)
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(
            f"no MLflow store at {db}: nothing was tracked there; pass the --workdir you "
            "trained with, or set MLFLOW_TRACKING_URI"
        )
    return uri


def resolve_model_version(
    model_uri: str, tracking_uri: str | None, workdir: Path | str = "."
) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> ``(name, version)``."""
    uri = require_store(tracking_uri, workdir)
    from registry.connection import is_unavailable_error, redact_uri, short_http_limits

    try:
        with short_http_limits(15, 1):  # a dead server: seconds, not MLflow's 7 retries
            return _resolve(model_uri, uri)
    except ConfigError:
        raise
    except Exception as err:
        if is_unavailable_error(err):
            raise ConfigError(
                f"the MLflow tracking server at {redact_uri(uri)} does not answer; start it or "
                "check MLFLOW_TRACKING_URI"
            ) from None
        raise


def _resolve(model_uri: str, uri: str) -> tuple[str, str]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from registry.tracking import is_unavailable_error

    ref = model_uri.removeprefix("models:/")
    name, at, alias = ref.partition("@")
    if not at:
        name, _, version = ref.partition("/")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        aliases = sorted(client.get_registered_model(name).aliases)
    except MlflowException as err:
        if is_unavailable_error(err):
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=20))
        raise ConfigError(
            f"no registered model {name!r}"
            + (f"; registered: {', '.join(names)}" if names else "; nothing is registered there")
            + " (train with --register NAME)"
        ) from None
    try:
        if at:
            return name, str(client.get_model_version_by_alias(name, alias).version)
        client.get_model_version(name, version)
        return name, version
    except MlflowException as err:
        if is_unavailable_error(err):
            raise
        if at:
            raise ConfigError(
                f"model {name!r} has no alias {alias!r}"
                + (f"; its aliases: {', '.join(aliases)}" if aliases else "; it has none")
                + " (promote one with `clinfuse compare --promote NAME`)"
            ) from None
        raise ConfigError(
            f"model {name!r} has no version {version!r}; train with --register first"
        ) from None
