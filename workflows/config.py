"""Typed configuration: one small YAML per named recipe, CLI ``--set key=value`` overrides.

Reading and merging the YAML lives in ``workflows.recipes`` (no torch); this module adds
the typed models, which import the model core.

``load_config("tiny")`` reads ``configs/tiny.yaml``; a path to a YAML file works too. A
recipe may name a ``base`` recipe it extends. Values from ``--set`` are parsed as YAML
scalars (``train.lr=3e-4``, ``cohort.modalities.ct.spec.size=[32,32,32]``).

``null`` over a section removes it, in a recipe over its base as in ``--set``: a cohort
without MRI is ``--set cohort.modalities.mri=null`` (or ``mri: null`` under
``cohort.modalities`` in a recipe with ``base: default``); ``select_modalities`` turns
``--modalities ct,note`` into those overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fusion.config import ModelConfig
from fusion.tasks import cohort_task
from fusion.train import TrainConfig
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError
from workflows.recipes import (  # noqa: F401  (re-exported: the recipe API lives here too)
    CONFIG_DIRS,
    apply_overrides,
    available_configs,
    read_recipe,
    select_modalities,
)


class IngestSettings(BaseModel):
    """How ingest runs: chunking and parallelism (not what it computes)."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(4, ge=1)
    workers: int = Field(2, ge=1)
    dask_address: str | None = None  # "local" for a LocalCluster, or tcp://host:8786
    # Wall-clock limit of one ingest task (a chunk, or one input when a chunk is re-run
    # input by input); an input that exceeds it is quarantined with code TIMEOUT.
    task_timeout_s: float = Field(900.0, gt=0)


class ServeSettings(BaseModel):
    """What ``clinfuse serve`` deploys: the nightly pipeline's schedule, folders and model.

    Folders default to ``$CLINFUSE_DATA_ROOT/{dicom-drop,notes,work}`` (the compose worker's
    mounts). The PostgreSQL URL for predictions is read from the environment variable named
    by ``db_url_env`` (secrets never live in config files).
    """

    model_config = ConfigDict(extra="forbid")

    nightly_cron: str = "30 2 * * *"
    timezone: str = "UTC"
    drop_dir: str | None = None
    notes: str | None = None
    workdir: str | None = None
    model: str = "models:/clinfuse@champion"
    db_url_env: str = "CLINFUSE_DB_URL"
    # At most this many runs of each deployment at once; a nightly run that is still busy
    # when the next one is due makes the new one cancel itself ("cancel_new") or wait.
    concurrency_limit: int = Field(1, ge=1)
    on_overlap: Literal["cancel_new", "enqueue"] = "cancel_new"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r}; use an IANA name like 'Europe/Berlin' or 'UTC'"
            ) from None
        return v

    def folders(self) -> dict[str, str]:
        """Resolved drop, notes and work folders."""
        import os

        root = Path(os.environ.get("CLINFUSE_DATA_ROOT", "."))
        return {
            "drop_dir": self.drop_dir or str(root / "dicom-drop"),
            "notes": self.notes or str(root / "notes"),
            "workdir": self.workdir or str(root / "work"),
        }


class Config(BaseModel):
    """The resolved configuration of a run (logged with it)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    cohort: CohortConfig
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @field_validator("cohort")
    @classmethod
    def _known_task(cls, v: CohortConfig) -> CohortConfig:
        """The task must be registered and accept the label columns (fusion.tasks)."""
        try:
            cohort_task(v)
        except ConfigError as err:
            raise ValueError(f"cohort.task: {err}") from None
        return v


def load_config(name_or_path: str = "default", overrides: list[str] | None = None) -> Config:
    """Read a recipe, apply overrides, validate; errors name the bad key."""
    data = apply_overrides(read_recipe(name_or_path), overrides or [])
    mods = (data.get("cohort") or {}).get("modalities")
    if isinstance(mods, dict):  # "mri: null" in a recipe without a base: nothing to remove
        data["cohort"]["modalities"] = {k: v for k, v in mods.items() if v is not None}
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        problems = [
            f"{'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        ]  # one line: the CLI prints user errors as a single line
        raise ConfigError(f"config {name_or_path!r} is invalid: " + "; ".join(problems)) from None
