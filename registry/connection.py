"""Reaching MLflow: which URI, short HTTP limits, "is it down?", experiments, datasets.

Shared by the live tracker (``registry.tracking``) and the offline spool's replay
(``registry.spool``). mlflow is imported inside functions: importing this module stays cheap
for the CLI.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "clinfuse"

# MLflow's own limits (mlflow.utils.validation); repeated here so this module imports nothing.
MAX_KEY_LEN = 250
MAX_PARAM_VAL_LEN = 6000
MAX_TAG_VAL_LEN = 8000
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_DATASET_DIGEST_LEN = 36

# MLflow error codes that mean "the server/store is not answering", not "your request is wrong".
_UNAVAILABLE_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
)


def resolve_tracking_uri(uri: str | None, workdir: Path | str) -> str:
    """Pick the tracking URI: explicit ``uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite.

    The default is an embedded SQLite file ``<workdir>/mlflow.db`` written as an absolute
    four-slash URI (``sqlite:////abs/path/mlflow.db``) so it does not depend on the cwd.
    """
    if uri:
        return uri
    env = os.environ.get(ENV_TRACKING_URI, "").strip()
    if env:
        return env
    db = Path(workdir).expanduser().resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def is_unavailable_error(exc: BaseException) -> bool:
    """True when ``exc`` means the tracking server/store could not be reached in time."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, MlflowException):
        if exc.error_code in _UNAVAILABLE_CODES:
            return True
        text = str(exc)
        return "API request to" in text and "failed" in text
    # Other OSErrors (socket resets, a full disk under a SQLite store) also mean "cannot log".
    return isinstance(exc, OSError)


@contextlib.contextmanager
def short_http_limits(timeout_s: float, max_retries: int) -> Iterator[None]:
    """Temporarily cap MLflow's HTTP timeout and retries (defaults: 120 s, 7 retries)."""
    new = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max(0, max_retries)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``Model.log``, ``register_model``, ``load_model``) at ``uri``
    for a block, then restore the previous global URI *and* ``$MLFLOW_TRACKING_URI``.

    ``mlflow.set_tracking_uri`` also writes the environment variable, so calling it bare would
    leak one run's server into every later default (including ``resolve_tracking_uri``).
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    old_uri = tracking_utils._tracking_uri  # None when never set: fall back to env/default
    old_env = os.environ.get(ENV_TRACKING_URI)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        tracking_utils.set_tracking_uri(old_uri)  # None also unsets the env var: fixed below
        if old_env is None:
            os.environ.pop(ENV_TRACKING_URI, None)
        else:
            os.environ[ENV_TRACKING_URI] = old_env


def now_ms() -> int:
    return int(time.time() * 1000)


def redact_uri(uri: str) -> str:
    """Drop ``user:password@`` from a URI before it goes into logs or spool files."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def local_artifact_root(tracking_uri: str, workdir: Path) -> Path | None:
    """Artifact folder for a database URI used directly (no server), else None.

    Without it MLflow puts artifacts of a SQLite/PostgreSQL store in ``./mlruns`` of whatever
    the current directory is; next to the work dir is where users look for them.
    """
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("sqlite", "postgresql", "mysql", "mssql"):
        return Path(workdir).resolve() / "mlartifacts"
    return None


def get_or_create_experiment(
    client: MlflowClient, name: str, artifact_root: Path | None = None
) -> str:
    """Experiment id for ``name``, creating it (race-safe) when missing.

    With ``artifact_root`` a new experiment stores artifacts in a subfolder of it.
    """
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root is not None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"
        location = (artifact_root / f"{slug}-{uuid.uuid4().hex[:8]}").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise exc from None
        return exp.experiment_id


def log_dataset(client: MlflowClient, run_id: str, info: Mapping[str, Any], context: str) -> None:
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    # Schema carries the summary columns, the source says only who produced it: no paths.
    ds = MetaDataset(
        CodeDatasetSource(tags={"producer": "clinfuse", "n_rows": str(info["n_rows"])}),
        name=str(info["name"]),
        digest=str(info["cohort_hash"])[:MAX_DATASET_DIGEST_LEN],
        schema=Schema([ColSpec(DataType.string, "cohort_hash"), ColSpec(DataType.long, "n_rows")]),
    )
    client.log_inputs(
        run_id,
        datasets=[
            DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        ],
    )
