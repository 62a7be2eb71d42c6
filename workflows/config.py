"""Typed configuration: one small YAML per named recipe, CLI ``--set key=value`` overrides.

``load_config("tiny")`` reads ``configs/tiny.yaml``; a path to a YAML file works too. A
recipe may name a ``base`` recipe it extends. Values from ``--set`` are parsed as YAML
scalars (``train.lr=3e-4``, ``cohort.modalities.ct.spec.size=[32,32,32]``).

``null`` over a section removes it, in a recipe over its base as in ``--set``: a cohort
without MRI is ``--set cohort.modalities.mri=null`` (or ``mri: null`` under
``cohort.modalities`` in a recipe with ``base: default``); ``select_modalities`` turns
``--modalities ct,note`` into those overrides.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fusion.config import ModelConfig
from fusion.train import TrainConfig
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError

CONFIG_DIRS = [
    Path(__file__).resolve().parents[1] / "configs",
    Path(sys.prefix) / "share" / "clinfuse" / "configs",
]


class IngestSettings(BaseModel):
    """How ingest runs: chunking and parallelism (not what it computes)."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(4, ge=1)
    workers: int = Field(2, ge=1)
    dask_address: str | None = None  # "local" for a LocalCluster, or tcp://host:8786


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


def available_configs() -> list[str]:
    """Names of the shipped recipes."""
    return sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def _find(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    for d in CONFIG_DIRS:
        if (d / f"{name_or_path}.yaml").is_file():
            return d / f"{name_or_path}.yaml"
    raise ConfigError(
        f"unknown config {name_or_path!r}; valid names: {', '.join(available_configs())} "
        "(or pass a path to a .yaml file)"
    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; ``None`` over a section (a mapping) removes it."""
    out = dict(base)
    for k, v in over.items():
        if v is None and isinstance(out.get(k), dict):
            out.pop(k)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = _find(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"config {path} extends itself through 'base'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    base = data.pop("base", None)
    data.setdefault("name", path.stem)
    return _merge(_read(base, (*seen, str(path))), data) if base else data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists)."""
    data = _merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        if value is None and isinstance(node.get(leaf), dict):
            node.pop(leaf)  # null removes a section (e.g. a modality the manifest lacks)
        else:
            node[leaf] = value
    return data


def select_modalities(
    name_or_path: str, overrides: list[str] | None, modalities: list[str] | str | None
) -> list[str]:
    """``overrides`` plus ``cohort.modalities.X=null`` for each entry not in ``modalities``.

    ``modalities`` is a list or a comma-separated string (``ct,note``); None keeps all.
    Unknown names are an error listing the recipe's entries.
    """
    overrides = list(overrides or [])
    if modalities is None:
        return overrides
    wanted = [
        m.strip()
        for m in (modalities.split(",") if isinstance(modalities, str) else modalities)
        if m.strip()
    ]
    data = apply_overrides(_read(name_or_path), overrides)
    have = sorted((data.get("cohort") or {}).get("modalities") or {})
    unknown = sorted(set(wanted) - set(have))
    if not wanted or unknown:
        raise ConfigError(
            f"--modalities {','.join(wanted) or '(empty)'}: "
            + (f"{', '.join(unknown)} not in" if unknown else "name at least one of")
            + f" config {name_or_path!r}'s modalities ({', '.join(have)})"
        )
    return overrides + [f"cohort.modalities.{m}=null" for m in have if m not in wanted]


def load_config(name_or_path: str = "default", overrides: list[str] | None = None) -> Config:
    """Read a recipe, apply overrides, validate; errors name the bad key."""
    data = apply_overrides(_read(name_or_path), overrides or [])
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
