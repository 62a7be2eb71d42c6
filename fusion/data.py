"""Reading a prepared cohort for training and scoring: dataset, batching, presence masks.

Samples hold only modalities that are present; ``collate_samples`` runs each modality's own
``collate`` on the rows that have it and scatters the result into full-batch tensors, so a
missing modality is ``present[name] = False`` (the model never reads those rows), never a
zero tensor pretending to be data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from fusion.device import move, pin
from modalities.base import Modality
from modalities.cache import TensorCache
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError

LABEL_DTYPES = {"binary": torch.float32, "multiclass": torch.long, "multilabel": torch.float32}


@dataclass
class Batch:
    """One training/scoring batch: per-modality inputs, presence masks, labels, pseudonyms."""

    inputs: dict[str, dict[str, Any]]
    present: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    patients: list[str]

    def to(self, device: torch.device) -> Batch:
        """Move tensors to ``device`` (non-blocking: pinned host memory overlaps the copy)."""
        return Batch(
            {m: {k: move(v, device) for k, v in d.items()} for m, d in self.inputs.items()},
            {m: move(p, device) for m, p in self.present.items()},
            move(self.labels, device) if self.labels is not None else None,
            self.patients,
        )

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        return Batch(
            {m: {k: pin(v) for k, v in d.items()} for m, d in self.inputs.items()},
            {m: pin(p) for m, p in self.present.items()},
            pin(self.labels) if self.labels is not None else None,
            self.patients,
        )


class PreparedCohort:
    """A prepared folder (``cohort.parquet``, ``prepared.json``, cache) plus its modalities.

    ``cohort`` may override encoder settings but its preprocessing specs must match what
    ingest used (checked by spec hash), otherwise the cached tensors would be misread.
    """

    def __init__(self, prepared: Path, cohort: CohortConfig | None = None) -> None:
        self.root = Path(prepared)
        meta_path = self.root / "prepared.json"
        if not meta_path.is_file():
            raise ConfigError(f"{self.root} is not a prepared cohort (no prepared.json); "
                              "run `clinfuse ingest` first")
        self.meta = json.loads(meta_path.read_text())
        self.cfg = cohort or CohortConfig.model_validate(self.meta["cohort"])
        self.frame = pd.read_parquet(self.root / "cohort.parquet")
        self.cache = TensorCache(self.root / "cache")
        self.mods = self.cfg.build()
        for name, mod in self.mods.items():
            want = self.meta["spec_hashes"].get(name)
            if want is not None and want != mod.spec_hash():
                raise ConfigError(
                    f"modality {name!r}: the config's preprocessing spec differs from the one "
                    f"{self.root} was prepared with; re-run ingest with this config"
                )

    @property
    def task(self) -> str:
        return self.cfg.task

    @property
    def label_columns(self) -> list[str]:
        return self.cfg.labels

    def usable(self, modalities: Sequence[str], labeled: bool = True) -> pd.DataFrame:
        """Rows not excluded, with at least one of ``modalities`` present (and labels)."""
        f = self.frame[~self.frame["excluded"].astype(bool)]
        any_present = np.zeros(len(f), dtype=bool)
        for m in modalities:
            any_present |= (f[f"{m}_status"] == "ok").to_numpy()
        f = f[any_present]
        if labeled:
            f = f[f[self.label_columns].notna().all(axis=1)]
        return f.reset_index(drop=True)

    def dataset(self, rows: pd.DataFrame, modalities: Sequence[str]) -> CohortDataset:
        return CohortDataset(rows, self.cache, {m: self.mods[m] for m in modalities},
                             self.label_columns)


class CohortDataset(Dataset):
    """Items: ``{"patient", "label", <modality>: cached value}`` for present modalities."""

    def __init__(
        self,
        rows: pd.DataFrame,
        cache: TensorCache,
        mods: dict[str, Modality],
        label_columns: list[str],
    ) -> None:
        self.patients = rows["patient"].astype(str).tolist()
        self.labels = (
            rows[label_columns].to_numpy(dtype=np.float32)
            if set(label_columns) <= set(rows.columns)
            else np.full((len(rows), len(label_columns)), np.nan, np.float32)
        )
        self.keys = {
            m: [k if s == "ok" else None
                for k, s in zip(rows[f"{m}_key"], rows[f"{m}_status"], strict=True)]
            for m in mods
        }
        self.cache, self.mods = cache, mods

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"patient": self.patients[i], "label": self.labels[i]}
        for m, keys in self.keys.items():
            if keys[i] is not None:
                item[m] = self.cache.get(self.mods[m].name, keys[i])
        return item

    def presence(self) -> dict[str, np.ndarray]:
        """Per-modality presence over the whole dataset (for subgroup metrics)."""
        return {m: np.array([k is not None for k in keys]) for m, keys in self.keys.items()}


def _scatter(value: Any, rows: list[int], size: int) -> Any:
    """Place a present-rows tensor into a full-batch tensor (other rows: zeros, masked)."""
    if not torch.is_tensor(value) or len(rows) == size:
        return value
    out = value.new_zeros((size, *value.shape[1:]))
    out[torch.as_tensor(rows)] = value
    return out


def collate_samples(
    samples: list[dict[str, Any]], mods: dict[str, Modality], task: str
) -> Batch:
    """Batch items: each modality's collate over the rows that have it, then scatter."""
    n = len(samples)
    inputs: dict[str, dict[str, Any]] = {}
    present: dict[str, torch.Tensor] = {}
    for m in sorted(mods):
        rows = [i for i, s in enumerate(samples) if m in s]
        present[m] = torch.zeros(n, dtype=torch.bool)
        present[m][rows] = True
        if rows:
            sub = mods[m].collate([samples[i][m] for i in rows])
            inputs[m] = {k: _scatter(v, rows, n) for k, v in sub.items()}
    labels_np = np.stack([np.asarray(s["label"], np.float32) for s in samples])
    labels = None
    if not np.isnan(labels_np).any():
        labels = torch.from_numpy(labels_np)
        labels = labels[:, 0] if task != "multilabel" else labels
        labels = labels.to(LABEL_DTYPES[task])
    return Batch(inputs, present, labels, [s["patient"] for s in samples])


class Collator:
    """Picklable collate_fn for DataLoader workers."""

    def __init__(self, mods: dict[str, Modality], task: str) -> None:
        self.mods, self.task = mods, task

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        return collate_samples(samples, self.mods, self.task)
