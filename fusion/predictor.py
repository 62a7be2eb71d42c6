"""Rebuild a trained model from its saved config and score raw inputs or prepared batches.

This is what an MLflow pyfunc model wraps (``build_predictor`` is the registered builder):
``predict_dataframe`` takes a DataFrame of raw inputs (volume paths, note text or note
paths), runs exactly the preprocessing ingest runs (same modality specs), and returns the
task's output columns: probabilities and a decision (classification), or one
``embedding_<tower>`` column per tower (an embedding task such as contrastive retrieval; a
list of floats, None where the row lacks that tower). Inputs that fail validation are
scored as absent and reported by reason code.

The builder carries two hooks ``registry.model_format`` reads: ``frozen_references``
(frozen pretrained text encoders are stored by reference to their package, not copied
into every model version) and ``example_io`` (a synthetic input example, no patient data,
and the matching output columns for the MLflow signature).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion.artifact import ModelArtifact
from fusion.config import ModelConfig
from fusion.data import collate_samples
from fusion.device import autocast, resolve_device
from fusion.heads import create_head
from fusion.model import FusionModel, build_model
from fusion.tasks import Task, cohort_task
from modalities.base import Modality
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError, InputRejected


class Predictor:
    """A FusionModel plus the modalities (specs, tokenizers) it was trained with.

    Built from a ``ModelArtifact`` (or its saved dict, validated into one); ``config`` is
    the artifact's JSON dict, ``artifact`` the typed object.
    """

    def __init__(self, config: ModelArtifact | Mapping[str, Any], device: str = "auto") -> None:
        self.artifact = ModelArtifact.from_config(config)
        self.config: dict[str, Any] = self.artifact.to_config()
        self.cohort: CohortConfig = self.artifact.cohort
        self.modalities: list[str] = sorted(self.artifact.modalities)
        built = self.cohort.build()
        self.mods: dict[str, Modality] = {m: built[m] for m in self.modalities}
        self.model: FusionModel = build_model(
            self.artifact.model, {m: self.mods[m].encoder() for m in self.modalities}
        )
        self.device = resolve_device(device)
        self.task = self.cohort.task
        self.task_rules: Task = cohort_task(self.cohort)
        self.threshold = float(self.artifact.threshold)
        # What a row without any of the model's modalities gets: the training prior, or for
        # an embedding task NaN embeddings (towers x dim) from the head.
        self.towers, self.prior = output_layout(self.artifact, self.task_rules,
                                                self.model.head)

    def to_device(self) -> Predictor:
        self.model.to(self.device).eval()
        return self

    @property
    def output_names(self) -> list[str] | None:
        """Names of the outputs: the label names (classification) or the towers (embeddings)."""
        return self.config.get("label_names") or self.towers

    @torch.inference_mode()
    def predict_samples(self, samples: list[dict[str, Any]]) -> np.ndarray:
        """The task's outputs (``Task.outputs``: probabilities, or embeddings) for prepared
        samples (``{"patient", "label", <modality>: value}``).

        Rows with none of the model's modalities get the training prior (embeddings: NaN).
        """
        mask = np.array([any(m in s for m in self.modalities) for s in samples], dtype=bool)
        outputs = None
        if mask.any():
            batch = collate_samples([s for s, u in zip(samples, mask, strict=True) if u],
                                    self.mods, self.task_rules)
            batch = batch.to(self.device)
            with autocast(self.device, True):
                result = self.model(batch.inputs, batch.present)
            outputs = self.task_rules.outputs(result).float().cpu().numpy()
        return self.task_rules.fill_missing(outputs, mask, self.prior, np.float32)

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
        probs = (
            np.concatenate(
                [
                    self.predict_samples([s for s, _ in loaded[k : k + batch_size]])
                    for k in range(0, len(loaded), batch_size)
                ]
            )
            if loaded
            else self.task_rules.fill_missing(None, np.zeros(0, bool), self.prior, np.float32)
        )
        return self.output_frame(
            df.index,
            probs,
            {m: [m in s for s, _ in loaded] for m in self.modalities},
            [";".join(f"{m}:{c}" for m, c in r.items()) for _, r in loaded],
        )

    def output_frame(
        self,
        index: pd.Index,
        probs: np.ndarray,
        present: dict[str, list[bool]],
        rejected: list[str],
    ) -> pd.DataFrame:
        """The output columns of ``predict_dataframe`` (also the MLflow signature's): the
        task's probability and decision columns, then presence and rejection reasons."""
        out = self.task_rules.output_frame(index, probs, self.output_names, self.threshold)
        for m in self.modalities:
            out[f"present_{m}"] = present[m]
        out["rejected"] = rejected
        return out


def output_layout(
    artifact: ModelArtifact, task: Task, head: torch.nn.Module | None = None
) -> tuple[list[str] | None, Any]:
    """``(towers, prior)``: what a row without any of the model's modalities gets.

    A scoring task: no towers, the saved training prior. An embedding task (``scores`` is
    False): the head's towers (``towers``, default every modality) and a NaN (towers, dim)
    array, the width read from the head's per-tower projections (``proj``). ``head`` is
    the built model's; without it the head alone is built from the saved config (cheap: no
    encoder, no weights).
    """
    if task.scores:
        return None, artifact.prior
    if head is None:
        head = _head_only(artifact.model, artifact.modalities)
    towers = [str(t) for t in getattr(head, "towers", sorted(artifact.modalities))]
    proj = getattr(head, "proj", None)
    if proj is None or towers[0] not in proj:
        raise ConfigError(f"head {artifact.model.head.name!r} outputs no per-tower embeddings; "
                          f"task {artifact.task!r} needs one that does")
    dim = int(proj[towers[0]].out_features)
    return towers, np.full((len(towers), dim), np.nan, dtype=np.float32)


def _head_only(cfg: ModelConfig, modalities: list[str]) -> torch.nn.Module:
    """The model's head built alone from its config (what ``build_model`` would build)."""
    names = sorted(modalities)
    if cfg.stack is not None:  # channel-stacked volumes become one modality
        stacked = set(cfg.stack.modalities)
        names = sorted([m for m in names if m not in stacked] + [cfg.stack.name])
    return create_head(cfg.head.name, cfg.d_model, names, **cfg.head.options)


def build_predictor(config: ModelArtifact | Mapping[str, Any]) -> Predictor:
    """The pyfunc builder: a Predictor with freshly initialised weights (caller loads them)."""
    return Predictor(config)


# Stands in for a note in the MLflow input example: synthetic, never patient text.
EXAMPLE_NOTE = "Synthetic example note for the model signature; no patient data."


def frozen_references(config: ModelArtifact | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """State-dict prefixes of frozen text encoders that a package provides, by reference.

    A frozen (``trainable_layers: 0``) encoder of the packaged MiniLM, or the seeded
    ``tiny-random`` BERT built on its config, is rebuilt identically from the installed
    package at load time: storing its 90 MB again in every model version buys nothing.
    The registry adds the tensors' SHA-256 and checks it at load. Fine-tuned encoders,
    local folders and hub models keep their weights in the model.
    """
    from importlib.metadata import PackageNotFoundError, version

    from modalities import text_encoder as te

    artifact = ModelArtifact.from_config(config)
    mods = artifact.cohort.build()
    refs: dict[str, dict[str, Any]] = {}
    for m in sorted(artifact.modalities):
        enc = getattr(mods[m], "encoder_config", None)
        if not isinstance(enc, te.TextEncoderConfig) or enc.trainable_layers != 0:
            continue
        if enc.model not in te._PACKAGED_ALIASES and enc.model != te.TINY_RANDOM:
            continue
        try:
            pkg_version = version(te.DEFAULT_MODEL)
        except PackageNotFoundError:
            continue  # not installed here: keep the weights in the model
        refs[f"encoders.{m}.model."] = {
            "kind": "text",
            "model": enc.model,
            "package": te.DEFAULT_MODEL,
            "version": pkg_version,
        }
    return refs


def example_io(config: ModelArtifact | Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A one-row synthetic input (a placeholder note, other inputs absent) and the output
    frame's columns and types, without building the model (no weights are loaded)."""
    artifact = ModelArtifact.from_config(config)
    cohort = artifact.cohort
    mods = cohort.build()
    modalities = sorted(artifact.modalities)
    row = {cohort.column(m): (EXAMPLE_NOTE if mods[m].kind == "text" else "") for m in modalities}
    inp = pd.DataFrame([row])
    shell = Predictor.__new__(Predictor)  # output_frame needs only these attributes
    shell.config, shell.task, shell.modalities = artifact.to_config(), cohort.task, modalities
    shell.task_rules = cohort_task(cohort)
    shell.threshold = float(artifact.threshold)
    shell.towers, shell.prior = output_layout(artifact, shell.task_rules)
    probs = shell.task_rules.fill_missing(None, np.zeros(1, bool), shell.prior, np.float32)
    if shell.towers is not None:
        # Embeddings: a second output row with a placeholder vector (zeros, not data) so
        # the signature types each embedding column as an optional array of floats.
        probs = np.concatenate([probs, np.zeros_like(probs)])
    index = pd.RangeIndex(len(probs))
    out = shell.output_frame(index, probs, {m: [False] * len(index) for m in modalities},
                             [""] * len(index))
    return inp, out


build_predictor.frozen_references = frozen_references  # type: ignore[attr-defined]
build_predictor.example_io = example_io  # type: ignore[attr-defined]
