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
  ``events.jsonl`` plus copied files (``registry.spool``, which also holds ``replay_spool``
  to push a spool into MLflow later).
  Errors that are not about reaching the server (a bad key, a bug) still raise.

URIs, HTTP limits and experiments live in ``registry.connection``; the names callers used
to import from here are re-exported. mlflow is imported inside functions:
``import registry.tracking`` stays cheap for the CLI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.connection import (  # noqa: F401  (re-exported: callers import them from here)
    DEFAULT_EXPERIMENT,
    ENV_TRACKING_URI,
    MAX_DATASET_DIGEST_LEN,
    MAX_KEY_LEN,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LEN,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LEN,
    get_or_create_experiment,
    is_unavailable_error,
    local_artifact_root,
    log_dataset,
    now_ms,
    redact_uri,
    resolve_tracking_uri,
    short_http_limits,
    using_tracking_uri,
)
from registry.spool import SPOOL_DIRNAME, Spool, replay_spool  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


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
    """A metric name MLflow accepts: ``@`` spelled ``_at_`` (``recall@1`` ->
    ``recall_at_1``), other characters it refuses as ``_``, long names shortened."""
    key = re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))
    if len(key) <= MAX_KEY_LEN:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{key[: MAX_KEY_LEN - 9]}~{digest}"


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
        self._spool: Spool | None = None
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
        end_ms = now_ms()
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
            t._spool = Spool.reopen(Path(handle["spool_dir"]))
            t.spool_dir = t._spool.dir
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
        ts = now_ms()
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
        log_dataset(self.client, self.run_id, info, context)

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
            redact_uri(self.tracking_uri),
            type(exc).__name__,
            spool,
        )

    def _ensure_spool(self) -> Path:
        """The run's spool folder, created on first use."""
        return self._spool_writer().dir

    def _spool_writer(self) -> Spool:
        if self._spool is None:
            meta = {
                "tracking_uri": self.tracking_uri,
                "experiment": self.experiment,
                "run_name": self.run_name,
                "run_id": self.run_id,
                "parent_run_id": self.parent_run_id,
                "tags": self.initial_tags,
                "created_ms": now_ms(),
            }
            self._spool = Spool(self.workdir, self.run_id or "", meta)
            self.spool_dir = self._spool.dir
        return self._spool

    def _spool_event(self, kind: str, **data: Any) -> None:
        self._spool_writer().event(kind, **data)

    def _spool_file(self, local_path: Path, artifact_path: str | None) -> None:
        self._spool_writer().file(local_path, artifact_path)

    def _spool_dir(self, local_dir: Path, artifact_path: str | None) -> None:
        self._spool_writer().folder(local_dir, artifact_path)
