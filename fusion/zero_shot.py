"""Zero-shot classification with a trained retrieval model: class prompts as classifiers.

Why: a CLIP-style model trained on pairing alone has never seen a label, yet its text
tower can describe classes. Each class's prompts (``cohort.zero_shot``: "a handwritten {}"
with "seven", ...) go through the same modality preprocessing and the trained text tower;
every other tower's held-out embedding is assigned the class whose (mean, renormalised)
prompt embedding is nearest by cosine. The label column is parsed at ingest (the class
index, NaN for a value that names no class) and read here, never in training. Metrics, per
classified tower ``m``: ``zero_shot/<m>/accuracy`` with a percentile bootstrap 95 % CI
(resampled within each class, ``fusion.metrics.bootstrap_ci``) and ``zero_shot/<m>/n``
(rows with that tower and a label naming a class).

This module imports no task or training code (the retrieval task imports its config
checks), so it runs the model itself rather than through ``fusion.train.predict``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from torch import nn

from fusion.metrics import bootstrap_ci
from modalities.base import modality_class
from modalities.cohort import CohortConfig, label_cells
from modalities.errors import ConfigError

log = logging.getLogger("clinfuse.train")
PREFIX = "zero_shot"

class ZeroShotConfig(BaseModel):
    """``cohort.zero_shot``: how class prompts are written (see docs/tasks.md).

    ``template``: a prompt with one ``{}`` for the class word ("a handwritten {}"), or a list
    of them (a prompt ensemble: their embeddings are averaged per class, as in CLIP).
    ``classes``: label value -> the word the prompt names (``{"7": seven}``), or a list of
    label values that name themselves. ``text``: the tower that embeds the prompts (default:
    the cohort's only text modality).
    """

    model_config = ConfigDict(extra="forbid")

    template: str | list[str]
    classes: dict[str, str] | list[str]
    text: str | None = None

    @field_validator("classes", mode="before")
    @classmethod
    def _string_keys(cls, v: Any) -> Any:
        """YAML reads ``0: zero`` with an int key: label values are strings."""
        if isinstance(v, Mapping):
            return {str(k): str(w) for k, w in v.items()}
        if isinstance(v, list):
            return [str(x) for x in v]
        return v

    @field_validator("template")
    @classmethod
    def _one_slot(cls, v: str | list[str]) -> str | list[str]:
        for t in [v] if isinstance(v, str) else v:
            if t.count("{}") != 1 or t.replace("{}", "").count("{") or "}" in t.replace(
                "{}", ""
            ):
                raise ValueError(f"template {t!r} must hold exactly one {{}} (the class word)")
        if not v:
            raise ValueError("give at least one template")
        return v

    @field_validator("classes")
    @classmethod
    def _two_classes(cls, v: dict[str, str] | list[str]) -> dict[str, str] | list[str]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("give two or more distinct classes")
        return v

    def class_words(self) -> dict[str, str]:
        """Label value -> class word, in the recipe's order (the class index order)."""
        return dict(self.classes) if isinstance(self.classes, dict) else {
            c: c for c in self.classes}

    def templates(self) -> list[str]:
        return [self.template] if isinstance(self.template, str) else list(self.template)

    def prompts(self) -> list[list[str]]:
        """Per class (index order), its prompts: one per template."""
        return [[t.replace("{}", w) for t in self.templates()]
                for w in self.class_words().values()]


def zero_shot_config(cfg: CohortConfig) -> ZeroShotConfig | None:
    """The cohort's zero-shot settings, validated (``ConfigError`` in one line), or None."""
    if cfg.zero_shot is None:
        return None
    try:
        zs = ZeroShotConfig.model_validate(cfg.zero_shot)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"cohort.zero_shot: {problems}") from None
    return zs


def text_tower(cfg: CohortConfig, zs: ZeroShotConfig) -> str:
    """The modality that embeds the prompts: ``zs.text`` or the one text modality."""
    kinds = {m: modality_class(e.type or m).kind for m, e in cfg.modalities.items()}
    texts = sorted(m for m, k in kinds.items() if k == "text")
    if zs.text is not None:
        if zs.text not in texts:
            raise ConfigError(f"cohort.zero_shot.text: {zs.text!r} is not a text modality of "
                              f"the cohort (text modalities: {', '.join(texts) or 'none'})")
        return zs.text
    if len(texts) != 1:
        raise ConfigError(f"cohort.zero_shot needs one text modality to embed the prompts; "
                          f"found {len(texts)}: name one with cohort.zero_shot.text")
    return texts[0]


def check_zero_shot(cfg: CohortConfig) -> None:
    """With ``cohort.zero_shot``: valid prompts, one label column, a text tower and another
    tower to classify (``ConfigError`` in one line otherwise)."""
    zs = zero_shot_config(cfg)
    if zs is None:
        return
    if len(cfg.labels) != 1:
        raise ConfigError("cohort.zero_shot reads exactly one label column in cohort.labels, "
                          f"got {len(cfg.labels)}")
    tower = text_tower(cfg, zs)
    if len(cfg.modalities) < 2:
        raise ConfigError(f"cohort.zero_shot classifies the towers other than {tower!r}; "
                          "the cohort has no other modality")


def zero_shot_labels(row: Mapping[str, str], cfg: CohortConfig) -> list[float] | None:
    """A manifest row's label as its class index for zero-shot evaluation: None without
    ``cohort.zero_shot`` or a label cell, NaN for a value that names no class (the row still
    trains: pairing needs no label)."""
    zs = zero_shot_config(cfg)
    cells = label_cells(row, cfg) if zs is not None else None
    if zs is None or cells is None:
        return None
    order = {v: i for i, v in enumerate(zs.class_words())}
    return [float(order.get(cells[c].strip(), np.nan)) for c in cfg.labels]


def accuracy(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Share of rows whose predicted class index equals the label's."""
    return {"accuracy": float(np.mean(y == pred)) if len(y) else np.nan}


def prompt_embeddings(
    model: nn.Module, tower: str, prompts: Sequence[Sequence[str]], mods: Mapping[str, Any],
    collate: Callable[[list[dict[str, Any]]], Any], device: torch.device, task: Any,
) -> np.ndarray:
    """(K, D) unit embeddings of K classes: each class's prompts through ``tower``, averaged.

    Prompts are preprocessed by the tower's modality exactly as ingest treats a manifest
    cell (for notes: de-identification included), collated with the model's modalities
    (only ``tower`` present) and embedded by the trained model in eval mode.
    """
    mod = mods[tower]
    flat = [p for ps in prompts for p in ps]
    items = [{"patient": f"prompt-{i}", "label": np.zeros(0, np.float32),
              tower: mod.preprocess(mod.load(mod.resolve(p, Path("."), "zero-shot prompt")))}
             for i, p in enumerate(flat)]
    batch = collate(items).to(device)
    model.eval()
    with torch.inference_mode():
        out = task.outputs(model(batch.inputs, batch.present))
    emb = out.float().cpu().numpy()[:, list(model.head.towers).index(tower)].astype(float)
    per_class, start = [], 0
    for ps in prompts:
        mean = emb[start:start + len(ps)].mean(0)
        per_class.append(mean / max(np.linalg.norm(mean), 1e-12))
        start += len(ps)
    return np.stack(per_class)


def classify(embeddings: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """Class index of the nearest prompt (cosine: embeddings are unit vectors) per row."""
    return np.argmax(np.asarray(embeddings, float) @ prompts.T, axis=1)


def zero_shot_scores(
    embeddings: np.ndarray, towers: Sequence[str], text: str, prompts: np.ndarray,
    labels: np.ndarray, present: Mapping[str, np.ndarray], n_boot: int, seed: int,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Accuracy (+ bootstrap CI) and n of every tower but ``text`` on rows with a label."""
    emb = np.asarray(embeddings, dtype=float)
    y = np.asarray(labels, dtype=float)
    out: dict[str, float] = {f"{PREFIX}/classes": float(len(prompts))}
    for k, m in enumerate(towers):
        if m == text:
            continue
        rows = (np.asarray(present.get(m, np.ones(len(y), bool)), bool) & ~np.isnan(y)
                & ~np.isnan(emb[:, k]).any(1))
        yk, pred = y[rows].astype(int), classify(emb[rows, k], prompts)
        key = f"{PREFIX}/{m}/accuracy"
        out[key] = accuracy(yk, pred)["accuracy"]
        out[f"{PREFIX}/{m}/n"] = float(rows.sum())
        if n_boot > 0:
            low, high = bootstrap_ci(accuracy, yk, pred, n_boot, alpha, seed)["accuracy"]
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
    return out


def zero_shot_metrics(
    model: nn.Module, cohort_cfg: CohortConfig, mods: Mapping[str, Any], rows: pd.DataFrame,
    test: Any, collate: Callable[[list[dict[str, Any]]], Any], device: torch.device,
    task: Any, n_boot: int, seed: int,
) -> dict[str, float]:
    """Zero-shot metrics of a trained retrieval model on ``rows`` (the test split, in the
    order of ``test``: ``fusion.train.Predictions`` with (N, T, D) embeddings as ``probs``);
    {} when the cohort has no ``zero_shot`` or the model no such text tower."""
    zs = zero_shot_config(cohort_cfg)
    if zs is None:
        return {}
    tower = text_tower(cohort_cfg, zs)
    towers = list(getattr(model.head, "towers", []))
    if tower not in towers:
        log.warning("zero-shot skipped: the model has no %r tower", tower)
        return {}
    label = cohort_cfg.labels[0]
    if label not in rows or rows[label].isna().all():  # e.g. ingested without zero_shot
        log.warning("zero-shot skipped: no test row has a %r value naming a class; re-run "
                    "ingest with cohort.zero_shot set", label)
        return {}
    prompts = prompt_embeddings(model, tower, zs.prompts(), mods, collate, device, task)
    return zero_shot_scores(test.probs, towers, tower, prompts,
                            rows[label].to_numpy(dtype=float), test.present, n_boot, seed)
