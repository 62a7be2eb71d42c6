"""The schema of ``cohort.parquet``: one object shared by the ingest writer and every reader.

One row per patient: ``patient`` (pseudonym), the label column(s) (float, NaN when
unlabeled), ``split`` (train/val/test or empty), ``excluded`` (bool), and per modality
``<m>_status`` (``ok``, ``missing`` or ``quarantined``) and ``<m>_key`` (the tensor-cache
key, set only when the status is ``ok``). Readers ask this object which rows hold a usable
input (``ok``, ``any_ok``, ``keys``) instead of re-deriving ``<m>_status == "ok"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

STATUS_OK, STATUS_MISSING, STATUS_QUARANTINED = "ok", "missing", "quarantined"
STATUSES = (STATUS_OK, STATUS_MISSING, STATUS_QUARANTINED)
QUARANTINE_COLUMNS = ["patient", "modality", "source", "code", "message"]


@dataclass(frozen=True)
class CohortTable:
    """Columns and dtypes of a prepared cohort for ``modalities`` and ``labels``."""

    modalities: tuple[str, ...]
    labels: tuple[str, ...]

    @classmethod
    def of(cls, modalities: Iterable[str], labels: Iterable[str]) -> CohortTable:
        return cls(tuple(sorted(modalities)), tuple(labels))

    @staticmethod
    def status_column(modality: str) -> str:
        return f"{modality}_status"

    @staticmethod
    def key_column(modality: str) -> str:
        return f"{modality}_key"

    @property
    def columns(self) -> list[str]:
        """Every column, in the order the writer stores them."""
        cols = ["patient", *self.labels, "split", "excluded"]
        return cols + [c for m in self.modalities
                       for c in (self.status_column(m), self.key_column(m))]

    @property
    def dtypes(self) -> dict[str, str]:
        """Column -> pandas dtype (labels float64, flags bool, everything else string)."""
        out = {"patient": "string", "split": "string", "excluded": "bool"}
        out |= dict.fromkeys(self.labels, "float64")
        for m in self.modalities:
            out[self.status_column(m)] = out[self.key_column(m)] = "string"
        return out

    def frame(self, rows: Sequence[dict]) -> pd.DataFrame:
        """The typed table of row dicts (what ingest writes as ``cohort.parquet``)."""
        df = pd.DataFrame(list(rows), columns=self.columns)
        for lab in self.labels:
            df[lab] = pd.to_numeric(df[lab])
        return df.astype({k: v for k, v in self.dtypes.items() if k != "patient"})

    @staticmethod
    def modalities_in(df: pd.DataFrame) -> list[str]:
        """The modalities a prepared table holds (those with a status column), sorted."""
        suffix = CohortTable.status_column("")
        return sorted(c.removesuffix(suffix) for c in df.columns if c.endswith(suffix))

    @staticmethod
    def ok(df: pd.DataFrame, modality: str) -> np.ndarray:
        """Bool mask: rows whose ``modality`` input was accepted by ingest (NA -> False)."""
        col = df[CohortTable.status_column(modality)].astype("string")
        return col.eq(STATUS_OK).fillna(False).to_numpy(dtype=bool)

    @staticmethod
    def any_ok(df: pd.DataFrame, modalities: Iterable[str]) -> np.ndarray:
        """Bool mask: rows with at least one of ``modalities`` accepted."""
        out = np.zeros(len(df), dtype=bool)
        for m in modalities:
            out |= CohortTable.ok(df, m)
        return out

    @staticmethod
    def keys(df: pd.DataFrame, modality: str) -> list[str | None]:
        """Per row: the cache key of an accepted ``modality`` input, else None."""
        ok = CohortTable.ok(df, modality)
        keys = df[CohortTable.key_column(modality)].tolist()
        return [str(k) if o else None for k, o in zip(keys, ok, strict=True)]
