"""Experiment tracking: one ``Tracker`` per MLflow run, cheap batched metrics, and a spool.

Why a wrapper and not ``mlflow.log_*`` directly:

* Metrics are buffered and sent with ``MlflowClient.log_batch`` every ``flush_every`` steps
  (200 synchronous ``log_metric`` calls cost ~4 s on SQLite; one batch costs milliseconds).
* Nested configs are flattened to dotted keys and truncated to MLflow's limits.
* **Resilience.** A tracking server that goes away mid-run must not kill a training job.
  Every call runs with short HTTP limits (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` /
  ``MLFLOW_HTTP_REQUEST_TIMEOUT``, set only around the tracker's own calls) so a dead server
  costs seconds. On a connection error the tracker warns once, switches to ``"degraded"``
  and writes everything still to be logged (params, metrics, tags, artifacts, dataset
  inputs, the run's end) to a spool folder under the work dir: ``run.json`` plus
  ``events.jsonl`` plus copied files. ``replay_spool`` pushes a spool into MLflow later.
  Errors that are not about reaching the server (a bad key, a bug) still raise.

mlflow is imported inside functions: ``import registry.tracking`` stays cheap for the CLI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
SPOOL_DIRNAME = "mlflow-spool"
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


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts to dotted keys with string values within MLflow's limits.

    Lists and other values are JSON-encoded (stable, readable in the UI); values longer
    than 6000 characters are truncated; keys longer than 250 get a short hash suffix so two
    long keys never collide after truncation.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, full))
            continue
        flat[_safe_key(full)] = _truncate(_param_str(value), MAX_PARAM_VAL_LEN)
    return flat


def _param_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump"):  # pydantic models (resolved configs)
        value = value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_key(key: str) -> str:
    if len(key) <= MAX_KEY_LEN:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{key[: MAX_KEY_LEN - 9]}~{digest}"


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


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """One MLflow run (optionally a child of ``parent``), used as a context manager.

    ``status`` is ``"idle"`` before start, ``"active"`` while logging to MLflow,
    ``"finished"`` after a clean end and ``"degraded"`` once anything had to go to the spool
    (it stays ``"degraded"`` after the end: the server lacks data until ``replay_spool``).
    """

    def __init__(
        self,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        *,
        tracking_uri: str | None = None,
        workdir: Path | str = ".",
        parent: Tracker | str | None = None,
        tags: Mapping[str, Any] | None = None,
        flush_every: int = 10,
        http_timeout_s: float = 5.0,
        http_max_retries: int = 1,
    ) -> None:
        self.workdir = Path(workdir).expanduser().resolve()
        self.tracking_uri = resolve_tracking_uri(tracking_uri, self.workdir)
        self.experiment = experiment
        self.run_name = run_name
        self.parent_run_id = parent.run_id if isinstance(parent, Tracker) else parent
        self.initial_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.flush_every = max(1, flush_every)
        self.http_timeout_s = http_timeout_s
        self.http_max_retries = http_max_retries
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.status = "idle"
        self.spool_dir: Path | None = None
        self._client: MlflowClient | None = None
        self._pending: list[tuple[str, float, int, int]] = []  # key, value, timestamp, step
        self._pending_steps: set[int] = set()
        self._spool_seq = 0
        self._ended = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self.finish("FAILED" if exc_type is not None else "FINISHED")

    @property
    def degraded(self) -> bool:
        return self.status == "degraded"

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def start(self) -> Tracker:
        """Create the run (and the experiment if needed); degrade if the server is down."""
        if self.status != "idle":
            return self
        self.status = "active"

        def _create() -> None:
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

            self.experiment_id = get_or_create_experiment(
                self.client, self.experiment, local_artifact_root(self.tracking_uri, self.workdir)
            )
            tags = dict(self.initial_tags)
            if self.parent_run_id:
                tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
            if self.run_name:
                tags[MLFLOW_RUN_NAME] = self.run_name
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.run_name)
            self.run_id = run.info.run_id
            self.run_name = run.info.run_name

        self._call(_create)  # on failure the spool's run.json records what to create
        return self

    def finish(self, status: str = "FINISHED") -> None:
        """Flush metrics and end the run with ``status`` (FINISHED, FAILED, KILLED)."""
        if self.status == "idle" or self._ended:
            return
        self.flush()
        end_ms = _now_ms()
        sent = not self.degraded and self._call(
            lambda: self.client.set_terminated(self.run_id, status, end_ms)
        )
        if not sent:
            self._spool_event("end", status=status, end_time=end_ms)
        self._ended = True
        if not self.degraded:
            self.status = "finished"

    def handle(self) -> dict[str, Any]:
        """IDs and paths another task needs to reattach to this started run (``resume``).

        No tracking URI (it may hold credentials): the resumer passes its own.
        """
        return {"experiment": self.experiment, "run_name": self.run_name,
                "run_id": self.run_id, "status": self.status,
                "spool_dir": str(self.spool_dir) if self.spool_dir else None}

    @classmethod
    def resume(
        cls, handle: Mapping[str, Any], tracking_uri: str | None = None,
        workdir: Path | str = ".",
    ) -> Tracker:
        """Reattach to a run another task started (``handle()``); ``finish`` ends it.

        A run that was spooled (server unreachable) keeps spooling into the same folder.
        """
        t = cls(handle["experiment"], handle.get("run_name"), tracking_uri=tracking_uri,
                workdir=workdir)
        t.run_id, t.status = handle.get("run_id"), str(handle.get("status") or "active")
        if handle.get("spool_dir"):
            t.spool_dir = Path(handle["spool_dir"])
            files = t.spool_dir / "files"
            t._spool_seq = len(list(files.iterdir())) if files.is_dir() else 0
        return t

    def child(self, run_name: str, **kwargs: Any) -> Tracker:
        """A nested run under this one, same URI and work dir (not started yet)."""
        kwargs.setdefault("tracking_uri", self.tracking_uri)
        kwargs.setdefault("workdir", self.workdir)
        return Tracker(self.experiment, run_name, parent=self, **kwargs)

    # ------------------------------------------------------------------ logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params as dotted keys; values stringified and truncated."""
        flat = flatten_params(params)
        if not flat:
            return
        if self.degraded:
            self._spool_event("params", params=flat)
            return

        def _send() -> None:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in flat.items()]
            for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

        if not self._call(_send):
            self._spool_event("params", params=flat)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer metrics for ``step``; sent every ``flush_every`` distinct steps."""
        ts = _now_ms()
        step = int(step or 0)
        for key, value in metrics.items():
            self._pending.append((_safe_key(str(key)), float(value), ts, step))
        self._pending_steps.add(step)
        if (
            len(self._pending_steps) >= self.flush_every
            or len(self._pending) >= MAX_METRICS_PER_BATCH
        ):
            self.flush()

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """One metric (buffered like ``log_metrics``)."""
        self.log_metrics({key: value}, step)

    def flush(self) -> None:
        """Send buffered metrics now (one ``log_batch`` per 1000 values)."""
        if not self._pending:
            return
        batch, self._pending, self._pending_steps = self._pending, [], set()
        if self.degraded:
            self._spool_event("metrics", metrics=batch)
            return

        def _send() -> None:
            from mlflow.entities import Metric

            items = [Metric(k, v, ts, s) for k, v, ts, s in batch]
            for i in range(0, len(items), MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH])

        if not self._call(_send):
            self._spool_event("metrics", metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified and truncated to 8000 characters)."""
        clean = {
            _safe_key(str(k)): _truncate(_param_str(v), MAX_TAG_VAL_LEN) for k, v in tags.items()
        }
        if not clean:
            return
        if self.degraded:
            self._spool_event("tags", tags=clean)
            return

        def _send() -> None:
            from mlflow.entities import RunTag

            items = [RunTag(k, v) for k, v in clean.items()]
            for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

        if not self._call(_send):
            self._spool_event("tags", tags=clean)

    def log_artifact(self, local_path: Path | str, artifact_path: str | None = None) -> None:
        """Upload one file (into folder ``artifact_path`` of the run's artifacts)."""
        local_path = Path(local_path)
        if self.degraded or not self._call(
            lambda: self.client.log_artifact(self.run_id, str(local_path), artifact_path)
        ):
            self._spool_file(local_path, artifact_path)

    def log_artifacts(self, local_dir: Path | str, artifact_path: str | None = None) -> None:
        """Upload a folder's contents (into ``artifact_path``)."""
        local_dir = Path(local_dir)
        if self.degraded or not self._call(
            lambda: self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)
        ):
            self._spool_dir(local_dir, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` to ``artifact_file`` (a run-relative path)."""
        self._log_generated(artifact_file, lambda p: p.write_text(text, encoding="utf-8"))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``data`` as JSON (or YAML for .yaml/.yml) to ``artifact_file``."""

        def _write(p: Path) -> None:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                p.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
            else:
                p.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")

        self._log_generated(artifact_file, _write)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure to ``artifact_file`` (png/svg/pdf by suffix)."""
        self._log_generated(artifact_file, lambda p: figure.savefig(p, bbox_inches="tight"))

    def log_table(self, df: pd.DataFrame, name: str) -> None:
        """Log a DataFrame as ``tables/<name>.csv`` (readable anywhere, diffable)."""
        stem = name[:-4] if name.endswith(".csv") else name
        self._log_generated(f"tables/{stem}.csv", lambda p: df.to_csv(p, index=False))

    def log_dataset_input(
        self, cohort_hash: str, n_rows: int, name: str = "cohort", context: str = "training"
    ) -> None:
        """Record the cohort a run used, by content hash and size only (no PHI).

        Logged as an ``mlflow.data`` meta dataset (digest = cohort hash, no rows, no paths)
        plus tags ``clinfuse.cohort_hash`` / ``clinfuse.cohort_rows`` for searching.
        """
        info = {"cohort_hash": str(cohort_hash), "n_rows": int(n_rows), "name": name}
        self.set_tags(
            {"clinfuse.cohort_hash": info["cohort_hash"], "clinfuse.cohort_rows": info["n_rows"]}
        )
        if self.degraded or not self._call(lambda: self._send_dataset(info, context)):
            self._spool_event("dataset", dataset=info, context=context)

    def _send_dataset(self, info: Mapping[str, Any], context: str) -> None:
        _log_dataset(self.client, self.run_id, info, context)

    # ------------------------------------------------------------------ internals
    def _log_generated(self, artifact_file: str, write: Any) -> None:
        """Write an artifact to a temp file named like ``artifact_file`` and upload it."""
        rel = Path(artifact_file)
        folder = str(rel.parent) if str(rel.parent) not in ("", ".") else None
        with tempfile.TemporaryDirectory(prefix="clinfuse-art-") as tmp:
            path = Path(tmp) / rel.name
            write(path)
            self.log_artifact(path, folder)

    def _call(self, fn: Any) -> bool:
        """Run one MLflow call with short HTTP limits; on unreachability degrade, return False."""
        if self.degraded:
            return False
        try:
            with short_http_limits(self.http_timeout_s, self.http_max_retries):
                fn()
            return True
        except Exception as exc:
            if not is_unavailable_error(exc):
                raise
            self._degrade(exc)
            return False

    def _degrade(self, exc: BaseException) -> None:
        self.status = "degraded"
        spool = self._ensure_spool()
        # One warning per run; no URL credentials or payloads in it, just where things went.
        log.warning(
            "MLflow tracking at %s is unreachable (%s); training continues and run data is "
            "spooled to %s. Push it later with `registry.tracking.replay_spool`.",
            _redact(self.tracking_uri),
            type(exc).__name__,
            spool,
        )

    def _ensure_spool(self) -> Path:
        if self.spool_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = f"{stamp}-{self.run_id or uuid.uuid4().hex[:12]}"
            self.spool_dir = self.workdir / SPOOL_DIRNAME / name
            (self.spool_dir / "files").mkdir(parents=True, exist_ok=True)
            meta = {
                "format": 1,
                "tracking_uri": _redact(self.tracking_uri),
                "experiment": self.experiment,
                "run_name": self.run_name,
                "run_id": self.run_id,
                "parent_run_id": self.parent_run_id,
                "tags": self.initial_tags,
                "created_ms": _now_ms(),
            }
            (self.spool_dir / "run.json").write_text(json.dumps(meta, indent=2))
        return self.spool_dir

    def _spool_event(self, kind: str, **data: Any) -> None:
        spool = self._ensure_spool()
        line = json.dumps({"kind": kind, **data}, default=str)
        with open(spool / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def _spool_target(self, name: str) -> tuple[Path, str]:
        self._spool_seq += 1
        rel = f"files/{self._spool_seq:05d}/{name}"
        return self._ensure_spool() / rel, rel

    def _spool_file(self, local_path: Path, artifact_path: str | None) -> None:
        dest, rel = self._spool_target(local_path.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local_path, dest)
        self._spool_event("artifact", file=rel, artifact_path=artifact_path)

    def _spool_dir(self, local_dir: Path, artifact_path: str | None) -> None:
        dest, rel = self._spool_target("dir")
        shutil.copytree(local_dir, dest)
        self._spool_event("artifacts", dir=rel, artifact_path=artifact_path)


def _redact(uri: str) -> str:
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


def _log_dataset(client: MlflowClient, run_id: str, info: Mapping[str, Any], context: str) -> None:
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


# ---------------------------------------------------------------------- replay
def replay_spool(spool_dir: Path | str, tracking_uri: str | None = None) -> list[str]:
    """Push spooled runs into MLflow; return their run ids.

    ``spool_dir`` is one run's spool (holding ``run.json``) or a folder of them (e.g.
    ``<workdir>/mlflow-spool``). The run is reused when it exists on the target server (the
    usual case: the server died mid-run and came back on the same backend), else created in
    the same experiment. Params already present are not re-sent. A replayed spool gets a
    ``replayed.json`` marker, so replaying twice does not duplicate anything.
    """
    spool_dir = Path(spool_dir)
    if (spool_dir / "run.json").exists():
        dirs = [spool_dir]
    else:
        dirs = sorted(p.parent for p in spool_dir.glob("*/run.json"))
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri, spool_dir)
    client = MlflowClient(uri)
    return [_replay_one(client, d) for d in dirs]


def _forget_artifact_repo(run_id: str) -> None:
    """Drop MLflow's per-run artifact-repo cache entry: it pins the server URL of first use,
    which is stale when the server came back elsewhere (private API, so best effort)."""
    with contextlib.suppress(Exception):
        from mlflow.tracking._tracking_service import utils

        utils._artifact_repos_cache.pop(run_id, None)


def _replay_one(client: MlflowClient, spool: Path) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    marker = spool / "replayed.json"
    if marker.exists():
        return str(json.loads(marker.read_text())["run_id"])
    meta = json.loads((spool / "run.json").read_text())
    events_file = spool / "events.jsonl"
    events = (
        [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
        if events_file.exists()
        else []
    )

    run_id = meta.get("run_id")
    run = None
    if run_id:
        with contextlib.suppress(MlflowException):
            run = client.get_run(run_id)
    if run is None:
        exp_id = get_or_create_experiment(client, meta["experiment"])
        tags = dict(meta.get("tags") or {})
        if meta.get("parent_run_id"):
            tags[MLFLOW_PARENT_RUN_ID] = meta["parent_run_id"]
        if meta.get("run_name"):
            tags[MLFLOW_RUN_NAME] = meta["run_name"]
        run = client.create_run(
            exp_id, start_time=meta.get("created_ms"), tags=tags, run_name=meta.get("run_name")
        )
        run_id = run.info.run_id
    existing_params = dict(run.data.params)
    _forget_artifact_repo(run_id)

    end: dict[str, Any] | None = None
    for ev in events:
        kind = ev["kind"]
        if kind == "params":
            new = {k: v for k, v in ev["params"].items() if k not in existing_params}
            items = [Param(k, v) for k, v in new.items()]
            for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])
            existing_params.update(new)
        elif kind == "metrics":
            items = [Metric(k, float(v), int(ts), int(s)) for k, v, ts, s in ev["metrics"]]
            for i in range(0, len(items), MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH])
        elif kind == "tags":
            items = [RunTag(k, v) for k, v in ev["tags"].items()]
            for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run_id, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        elif kind == "artifact":
            client.log_artifact(run_id, str(spool / ev["file"]), ev.get("artifact_path"))
        elif kind == "artifacts":
            client.log_artifacts(run_id, str(spool / ev["dir"]), ev.get("artifact_path"))
        elif kind == "dataset":
            _log_dataset(client, run_id, ev["dataset"], ev.get("context", "training"))
        elif kind == "end":
            end = ev
    if end is not None:
        client.set_terminated(run_id, end["status"], int(end["end_time"]))
    marker.write_text(json.dumps({"run_id": run_id, "replayed_ms": _now_ms()}))
    return str(run_id)
