"""The offline spool: where a run's data goes while MLflow is unreachable, and its replay.

A spool is one folder per run under ``<workdir>/mlflow-spool``: ``run.json`` (what run to
create or continue), ``events.jsonl`` (params, metrics, tags, artifacts, dataset inputs and
the run's end, in logging order) and ``files/`` (copies of spooled artifacts). ``Spool``
writes one; ``replay_spool`` pushes spools into MLflow later, once.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.connection import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    get_or_create_experiment,
    log_dataset,
    now_ms,
    redact_uri,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

SPOOL_DIRNAME = "mlflow-spool"


class Spool:
    """The spool folder of one run, created on the first write (``meta`` goes to run.json)."""

    def __init__(self, workdir: Path, run_key: str, meta: dict[str, Any]) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = Path(workdir) / SPOOL_DIRNAME / f"{stamp}-{run_key or uuid.uuid4().hex[:12]}"
        (self.dir / "files").mkdir(parents=True, exist_ok=True)
        meta = {"format": 1, **meta, "tracking_uri": redact_uri(meta["tracking_uri"])}
        (self.dir / "run.json").write_text(json.dumps(meta, indent=2))
        self._seq = 0

    @classmethod
    def reopen(cls, folder: Path) -> Spool:
        """An existing spool folder, to append to (a run resumed in another task)."""
        spool = cls.__new__(cls)
        spool.dir = Path(folder)
        files = spool.dir / "files"
        spool._seq = len(list(files.iterdir())) if files.is_dir() else 0
        return spool

    def event(self, kind: str, **data: Any) -> None:
        """Append one event line (flushed: a crash right after still leaves it on disk)."""
        line = json.dumps({"kind": kind, **data}, default=str)
        with open(self.dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def _target(self, name: str) -> tuple[Path, str]:
        self._seq += 1
        rel = f"files/{self._seq:05d}/{name}"
        return self.dir / rel, rel

    def file(self, local_path: Path, artifact_path: str | None) -> None:
        """Copy one artifact file into the spool."""
        dest, rel = self._target(local_path.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local_path, dest)
        self.event("artifact", file=rel, artifact_path=artifact_path)

    def folder(self, local_dir: Path, artifact_path: str | None) -> None:
        """Copy an artifact folder into the spool."""
        dest, rel = self._target("dir")
        shutil.copytree(local_dir, dest)
        self.event("artifacts", dir=rel, artifact_path=artifact_path)


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
            log_dataset(client, run_id, ev["dataset"], ev.get("context", "training"))
        elif kind == "end":
            end = ev
    if end is not None:
        client.set_terminated(run_id, end["status"], int(end["end_time"]))
    marker.write_text(json.dumps({"run_id": run_id, "replayed_ms": now_ms()}))
    return str(run_id)
