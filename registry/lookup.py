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
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ref = model_uri.removeprefix("models:/")
    name, at, alias = ref.partition("@")
    if not at:
        name, _, version = ref.partition("/")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        names = sorted(m.name for m in client.search_registered_models(max_results=200))
    except MlflowException:
        names = []
    if names and name not in names:
        raise ConfigError(f"no registered model {name!r}; registered: {', '.join(names)}")
    try:
        if at:
            return name, str(client.get_model_version_by_alias(name, alias).version)
        client.get_model_version(name, version)
        return name, version
    except MlflowException:
        if at:
            try:
                aliases = sorted(client.get_registered_model(name).aliases)
            except MlflowException:
                aliases = []
            raise ConfigError(
                f"model {name!r} has no alias {alias!r}"
                + (f"; its aliases: {', '.join(aliases)}" if aliases else "; it has none")
                + " (promote one with `clinfuse compare --promote NAME`)"
            ) from None
        raise ConfigError(
            f"model {name!r} has no version {version!r}; train with --register first"
        ) from None
