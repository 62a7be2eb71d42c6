"""Rebuild a trained model from its saved config and score raw inputs or prepared batches.

This is what an MLflow pyfunc model wraps (``build_predictor`` is the registered builder):
``predict_dataframe`` takes a DataFrame of raw inputs (volume paths, note text or note
paths), runs exactly the preprocessing ingest runs (same modality specs), and returns
probabilities. Inputs that fail validation are scored as absent and reported by reason code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.config import ModelConfig
from fusion.data import collate_samples
from fusion.model import FusionModel, build_model
from fusion.train import autocast, probabilities, resolve_device
from modalities.base import Modality
from modalities.cohort import CohortConfig
from modalities.errors import InputRejected


def model_config_for(config: dict[str, Any]) -> ModelConfig:
    return ModelConfig.model_validate(config["model"])


class Predictor:
    """A FusionModel plus the modalities (specs, tokenizers) it was trained with.

    ``config`` keys: ``cohort`` (CohortConfig dump), ``model`` (ModelConfig dump),
    ``modalities`` (the subset this model uses), ``threshold``, ``prior`` (training
    prevalence, used when a row has none of the model's modalities), ``label_names``.
    """

    def __init__(self, config: dict[str, Any], device: str = "auto") -> None:
        self.config = config
        self.cohort = CohortConfig.model_validate(config["cohort"])
        self.modalities: list[str] = sorted(config["modalities"])
        built = self.cohort.build()
        self.mods: dict[str, Modality] = {m: built[m] for m in self.modalities}
        self.model: FusionModel = build_model(
            model_config_for(config), {m: self.mods[m].encoder() for m in self.modalities}
        )
        self.device = resolve_device(device)
        self.task = self.cohort.task
        self.threshold = float(config.get("threshold", 0.5))
        self.prior = config.get("prior", 0.5)

    def to_device(self) -> Predictor:
        self.model.to(self.device).eval()
        return self

    @torch.inference_mode()
    def predict_samples(self, samples: list[dict[str, Any]]) -> np.ndarray:
        """Probabilities for prepared samples (``{"patient", "label", <modality>: value}``).

        Rows with none of the model's modalities get the training prior.
        """
        n_out = 1 if self.task == "binary" else len(np.atleast_1d(self.prior))
        out = np.tile(np.asarray(self.prior, dtype=np.float32), (len(samples), 1))
        usable = [i for i, s in enumerate(samples) if any(m in s for m in self.modalities)]
        if usable:
            batch = collate_samples([samples[i] for i in usable], self.mods, self.task)
            batch = batch.to(self.device)
            with autocast(self.device, True):
                logits = self.model(batch.inputs, batch.present)["logits"]
            probs = probabilities(self.task, logits).float().cpu().numpy()
            out[usable] = probs.reshape(len(usable), n_out)
        return out[:, 0] if self.task == "binary" else out

    def _load_row(self, row: pd.Series, i: int) -> tuple[dict[str, Any], dict[str, str]]:
        sample: dict[str, Any] = {"patient": str(i), "label": np.array([np.nan], np.float32)}
        rejected: dict[str, str] = {}
        for m, mod in self.mods.items():
            value = row.get(self.cohort.column(m))
            if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
                continue
            try:
                source = mod.resolve(str(value), Path("/"), f"input row {i}, column {m!r}")
                sample[m] = mod.preprocess(mod.load(source))
            except InputRejected as err:
                rejected[m] = str(err.code)
        return sample, rejected

    def predict_dataframe(self, df: pd.DataFrame, batch_size: int = 16) -> pd.DataFrame:
        """Score raw inputs: one output row per input row (same index)."""
        self.to_device()
        loaded = [self._load_row(row, i) for i, (_, row) in enumerate(df.iterrows())]
        probs = np.concatenate(
            [
                self.predict_samples([s for s, _ in loaded[k : k + batch_size]])
                for k in range(0, len(loaded), batch_size)
            ]
        ) if loaded else np.zeros((0,))
        out = pd.DataFrame(index=df.index)
        if self.task == "binary":
            out["probability"] = probs
            out["prediction"] = (probs >= self.threshold).astype(int)
            out["threshold"] = self.threshold
        else:
            names = self.config.get("label_names") or [str(k) for k in range(probs.shape[1])]
            for k, name in enumerate(names):
                out[f"probability_{name}"] = probs[:, k]
            out["prediction"] = (
                probs.argmax(1) if self.task == "multiclass"
                else [",".join(n for n, p in zip(names, r, strict=True) if p >= self.threshold)
                      for r in probs]
            )
        for m in self.modalities:
            out[f"present_{m}"] = [m in s for s, _ in loaded]
        out["rejected"] = [";".join(f"{m}:{c}" for m, c in r.items()) for _, r in loaded]
        return out


def build_predictor(config: dict[str, Any]) -> Predictor:
    """The pyfunc builder: a Predictor with freshly initialised weights (caller loads them)."""
    return Predictor(config)
