"""The cohort recipe (which modalities, labels, policies) and the manifest it reads.

A manifest is CSV, Parquet or JSONL with an ID column, one column per modality named in
the config, label column(s) and an optional ``split``. Cells are read as strings; empty
cells mean "not available".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modalities.base import Modality, create_modality
from modalities.errors import ConfigError, InputRejected, ReasonCode

SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_TRUE = {"1", "1.0", "true", "yes", "y", "positive", "pos"}
_FALSE = {"0", "0.0", "false", "no", "n", "negative", "neg"}


class ModalityEntry(BaseModel):
    """One modality of the cohort: its registered type, manifest column and settings."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = None  # registered modality type; default: the entry's name
    column: str | None = None  # manifest column; default: the entry's name
    required: bool = False  # a patient missing it is excluded from training/scoring
    spec: dict = Field(default_factory=dict)
    encoder: dict = Field(default_factory=dict)


class CohortConfig(BaseModel):
    """What ingest reads and how it treats bad input."""

    model_config = ConfigDict(extra="forbid")

    modalities: dict[str, ModalityEntry]
    id_column: str = "patient_id"
    labels: list[str] = Field(default_factory=lambda: ["label"])
    # A registered task (fusion.tasks: binary, multiclass, multilabel, retrieval); the
    # task checks the label columns against its rules when it is looked up.
    task: str = "binary"
    classes: list[str] | None = None  # multiclass: class names in order (else 0..K-1 ints)
    # retrieval: class prompts for zero-shot evaluation (checked by the task; docs/tasks.md)
    zero_shot: dict[str, Any] | None = None
    split_column: str = "split"
    on_bad_input: Literal["drop_modality", "drop_patient"] = "drop_modality"

    @model_validator(mode="after")
    def _check(self) -> CohortConfig:
        if not self.modalities:
            raise ValueError("cohort.modalities is empty; name at least one modality")
        return self

    def column(self, name: str) -> str:
        return self.modalities[name].column or name

    def build(self) -> dict[str, Modality]:
        """Instantiate every modality by registered type (unknown names list valid ones)."""
        out: dict[str, Modality] = {}
        for name in sorted(self.modalities):
            e = self.modalities[name]
            try:
                out[name] = create_modality(name, e.spec, e.encoder, type=e.type)
            except ValueError as err:  # pydantic validation of spec/encoder
                raise ConfigError(f"cohort.modalities.{name}: {err}") from None
        return out


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a CSV/Parquet/JSONL manifest with every cell as a string ('' when empty)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet"):
            df = pd.read_parquet(path)
        elif suffix.endswith((".jsonl", ".ndjson")):
            df = pd.read_json(path, lines=True, dtype=False)
        elif suffix.endswith((".csv", ".tsv")):
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, sep="\t" if suffix.endswith("tsv") else ","
            )
        else:
            raise ConfigError(f"manifest {path}: use .csv, .tsv, .parquet or .jsonl")
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise ConfigError(f"manifest {path} could not be parsed ({type(err).__name__})") from None
    df = df.astype(object).where(df.notna(), "")
    return df.map(lambda v: "" if v is None else str(v).strip()).reset_index(drop=True)


def check_manifest_columns(df: pd.DataFrame, cfg: CohortConfig, path: Path) -> None:
    """Fail fast (whole run) when the manifest lacks the ID or a configured modality column.

    The message names the expected columns only, never the ones found: a manifest without
    its header row has the first patient's ID, name or birth date as "column names".
    """
    cols = set(df.columns)
    wanted = [cfg.id_column] + [cfg.column(m) for m in sorted(cfg.modalities)]
    missing = [c for c in wanted if c not in cols]
    if missing:
        no_header = not (cols & set(wanted))
        raise ConfigError(
            f"manifest {path.name} lacks the required column(s) {', '.join(missing)}"
            + (" (is its header row missing?)" if no_header else "")
            + "; the first line must name the columns: rename them, or set "
            "cohort.id_column / cohort.modalities.<name>.column"
        )


class LabelParser(Protocol):
    """What ingest needs from the cohort's task: raw label cells -> floats.

    The task (``fusion.tasks``) owns its label rules; ingest receives it from the caller
    (``workflows``), so this package never imports the model core. The raw-value rules it
    composes (``flag_value``, ``class_index``) live here.
    """

    def parse_labels(self, row: Mapping[str, str], cfg: CohortConfig) -> list[float] | None:
        """Labels of one manifest row; None when unlabeled; InputRejected(BAD_LABEL)."""
        ...


def label_cells(row: Mapping[str, str], cfg: CohortConfig) -> dict[str, str] | None:
    """The row's label cells by column, or None when no label cell is filled (unlabeled)."""
    present = [c for c in cfg.labels if c in row]
    if not present or all(row[c] == "" for c in present):
        return None
    return {c: row.get(c, "") for c in cfg.labels}


def flag_value(raw: str, col: str) -> float:
    """A 0/1 label cell (0/1/true/false/yes/no/positive/negative) as 0.0 or 1.0."""
    low = raw.lower()
    if low in _TRUE:
        return 1.0
    if low in _FALSE:
        return 0.0
    raise InputRejected(
        ReasonCode.BAD_LABEL,
        f"label column {col!r} holds a value that is not binary (0/1/true/false)"
        + (" or is empty" if raw == "" else "")
        + "; fix the manifest or leave every label cell empty for unlabeled rows",
    )


def class_index(raw: str, classes: list[str] | None, col: str) -> float:
    """A class label cell as its index: a name of ``classes`` or a non-negative integer."""
    if classes and raw in classes:
        return float(classes.index(raw))
    try:
        k = int(float(raw))
    except ValueError:
        k = -1
    limit = len(classes) if classes else None
    if k < 0 or (limit is not None and k >= limit) or (raw and float(raw) != k):
        valid = classes or "non-negative integers"
        raise InputRejected(
            ReasonCode.BAD_LABEL,
            f"label column {col!r} holds a value that is not a class (valid: {valid})",
        )
    return float(k)


def parse_split(row: pd.Series, cfg: CohortConfig) -> str | None:
    """The row's split (train/val/test), None when not given; BAD_SPLIT when unknown."""
    raw = row.get(cfg.split_column, "")
    if raw == "":
        return None
    try:
        return SPLITS[raw.lower()]
    except KeyError:
        raise InputRejected(
            ReasonCode.BAD_SPLIT,
            f"split must be one of {sorted(set(SPLITS.values()))} or empty; fix the manifest",
        ) from None
