"""A trained variant's run folder: the one writer and the one reader.

Every variant, trained in-process by the train flow or under torchrun by
``workflows.train_worker``, is trained by ``train_to_folder`` and leaves the same folder;
``registry.experiment.log_run_folder`` logs it to MLflow (the training processes never
touch MLflow). Layout (docs/training.md, "Run folder"):

=========================== ===========================================================
``artifact.json``           the ``ModelArtifact`` (what the model is rebuilt from)
``weights.safetensors``     best state dict of the plain module, without the tensors of
                            frozen packaged encoders (rebuilt from their package)
``test_metrics.json``       test metrics with CIs (NaN written as ``null``)
``test_predictions.parquet``the predictions table (pseudonyms only)
``epochs.jsonl``            one line per epoch, appended as training goes
``fit.json``                variant, world size, history, best epoch, splits; written last:
                            a folder without it did not finish
``ranks/rank<R>.json``      per process: training samples per epoch, last-epoch shard
=========================== ===========================================================

Rank 0 writes everything but its own ``ranks`` file; no PHI is written.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusion import distributed as dist_
from fusion.artifact import ModelArtifact
from fusion.config import ModelConfig
from fusion.data import PreparedCohort
from fusion.experiment import Variant, VariantResult, plan_variants, split_cohort, train_variant
from fusion.train import Predictions, TrainConfig, monitored
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError

ARTIFACT_FILE = "artifact.json"
WEIGHTS_FILE = "weights.safetensors"
TEST_METRICS_FILE = "test_metrics.json"
TEST_PREDICTIONS_FILE = "test_predictions.parquet"
EPOCHS_FILE = "epochs.jsonl"
FIT_FILE = "fit.json"
RANKS_DIR = "ranks"
_RANK0_FILES = (FIT_FILE, ARTIFACT_FILE, WEIGHTS_FILE, TEST_METRICS_FILE,
                TEST_PREDICTIONS_FILE, EPOCHS_FILE)


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, so the files are strict JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Write strict JSON atomically (readers never see half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def predictions_table(test: Predictions, task: str, threshold: float) -> pd.DataFrame:
    """Per test patient: the task's columns (``Task.prediction_table``): pseudonym, label,
    probabilities, decision, ``present_<modality>``."""
    from fusion.tasks import get_task

    return get_task(task).prediction_table(test.patients, test.probs, test.labels, threshold,
                                           test.present)


def _frozen_prefixes(artifact: ModelArtifact) -> list[str]:
    from fusion.predictor import frozen_references

    return sorted(frozen_references(artifact))


def clear_folder(out: Path) -> None:
    """Rank 0, before training: remove what an earlier run left, so a folder that lacks
    ``fit.json`` afterwards is one that did not finish (never a stale success)."""
    (out / RANKS_DIR).mkdir(parents=True, exist_ok=True)
    for name in _RANK0_FILES:
        (out / name).unlink(missing_ok=True)
    for stale in (out / RANKS_DIR).glob("rank*.json"):
        stale.unlink()


def epoch_logger(out: Path, echo: bool = False) -> Callable[[int, dict[str, float]], None]:
    """An ``on_epoch`` that appends each epoch's metrics to ``epochs.jsonl`` (rank 0)."""
    path = out / EPOCHS_FILE

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe({"epoch": epoch, **metrics})) + "\n")
        if echo:
            shown = {k: round(v, 4) for k, v in metrics.items() if k != "lr"}
            print(f"epoch {epoch}: {shown}", file=sys.stderr, flush=True)

    return on_epoch


def write_run_folder(
    out: Path, result: VariantResult, splits: Mapping[str, int], train_cfg: TrainConfig,
    local_rank: int = 0,
) -> dict[str, Any]:
    """Write ``result`` to ``out`` (rank 0; every rank writes its ``ranks`` file); return
    the ``fit.json`` summary. ``fit.json`` is written last."""
    fit_res, variant = result.fit, result.variant
    write_json(out / RANKS_DIR / f"rank{dist_.rank()}.json", {
        "rank": dist_.rank(), "world_size": dist_.world_size(), "local_rank": local_rank,
        "train_samples_per_epoch": fit_res.train_samples,
        "train_patients_last_epoch": sorted(fit_res.train_patients),
    })
    frozen = _frozen_prefixes(result.artifact)
    summary = {
        "variant": variant.name, "fusion": variant.fusion,
        "modalities": list(variant.modalities), "world_size": dist_.world_size(),
        "backend": torch.distributed.get_backend() if dist_.distributed() else None,
        "per_process_batch_size": train_cfg.batch_size,
        "best_epoch": fit_res.best_epoch, "best_value": fit_res.best_value,
        "monitor": monitored(train_cfg, result.artifact.task),
        "stopped_early": fit_res.stopped_early,
        "seconds": fit_res.seconds, "epochs": len(fit_res.history),
        "history": fit_res.history, "threshold": result.threshold,
        "splits": dict(splits),
        "n_parameters": sum(p.numel() for p in result.model.parameters()),
        "frozen_prefixes": frozen,
    }
    if dist_.is_main():
        kept = {k: v for k, v in result.model.state_dict().items()
                if not any(k.startswith(p) for p in frozen)}
        save_state(kept, out / WEIGHTS_FILE)
        result.artifact.save(out / ARTIFACT_FILE)
        write_json(out / TEST_METRICS_FILE, result.test_metrics)
        predictions_table(result.test, result.artifact.task, result.threshold).to_parquet(
            out / TEST_PREDICTIONS_FILE, index=False)
        write_json(out / FIT_FILE, summary)
    return summary


def save_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors (cloned: safetensors refuses shared storage)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(path),
              metadata={"format": "clinfuse"})


def train_to_folder(
    prepared: Path,
    cohort_cfg: CohortConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    fusion: str,
    modalities: list[str] | None,
    out: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    local_rank: int = 0,
    echo: bool = False,
) -> dict[str, Any]:
    """Split the cohort, train one variant (DDP inside a process group), write ``out``.

    The one domain function behind both paths: the train flow calls it in-process, the
    torchrun worker calls it on every rank. ``modalities`` (default: all of the cohort's)
    with one name trains a unimodal baseline. ``on_epoch`` also sees each epoch (rank 0).
    Returns the ``fit.json`` summary.
    """
    cohort = PreparedCohort(prepared, cohort_cfg)
    rows = split_cohort(cohort, train_cfg)
    mods = list(modalities or []) or sorted(cohort.mods)
    unknown = sorted(set(mods) - set(cohort.mods))
    if unknown:
        raise ConfigError(f"modalities {', '.join(unknown)} are not in the cohort; valid "
                          f"names: {', '.join(sorted(cohort.mods))}")
    variant = plan_variants(mods, [fusion], baselines=False, unimodal_fusion=fusion)[0]
    if dist_.is_main():  # other ranks write their files only after training has synchronised
        clear_folder(out)
    dist_.barrier()
    write_epoch = epoch_logger(out, echo)

    def epoch_done(epoch: int, metrics: dict[str, float]) -> None:  # rank 0 only (fit's rule)
        write_epoch(epoch, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    result = train_variant(cohort, rows, variant, model_cfg, train_cfg, epoch_done)
    summary = write_run_folder(out, result, rows["split"].value_counts().to_dict(), train_cfg,
                               local_rank)
    dist_.barrier()  # no rank exits (tearing the job down) before rank 0 has written
    return summary


@dataclass
class RunFolder:
    """A finished run folder, read back (what the registry logs)."""

    path: Path
    artifact: ModelArtifact
    fit: dict[str, Any]
    test_metrics: dict[str, Any]
    predictions: pd.DataFrame

    @property
    def variant(self) -> Variant:
        return Variant(self.fit["variant"], self.fit["fusion"], tuple(self.fit["modalities"]))

    def epochs(self) -> list[dict[str, Any]]:
        """Per-epoch metrics in order (``epoch`` key = step)."""
        path = self.path / EPOCHS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]

    def predictor(self, device: str = "cpu") -> Any:
        """The trained model, rebuilt from the artifact and the weights (no unpickling).

        Tensors under ``fit["frozen_prefixes"]`` are not in the weights file: the freshly
        built frozen encoder (from its installed package) supplies them.
        """
        from safetensors.torch import load_file

        from fusion.predictor import Predictor

        predictor = Predictor(self.artifact, device=device)
        weights = load_file(str(self.path / WEIGHTS_FILE))
        state = predictor.model.state_dict()
        frozen = tuple(self.fit.get("frozen_prefixes") or ())
        unknown = sorted(set(weights) - set(state))
        missing = sorted(k for k in set(state) - set(weights)
                         if not (frozen and k.startswith(frozen)))
        if unknown or missing:
            raise ConfigError(
                f"{self.path / WEIGHTS_FILE} does not match {ARTIFACT_FILE}: "
                f"{len(unknown)} unexpected and {len(missing)} missing tensors "
                f"(e.g. {(unknown or missing)[0]})")
        predictor.model.load_state_dict({**state, **weights}, strict=True)
        return predictor


def read_run_folder(path: Path) -> RunFolder:
    """Read a finished run folder; one without ``fit.json`` did not finish (ConfigError)."""
    path = Path(path)
    if not (path / FIT_FILE).is_file():
        raise ConfigError(f"run folder {path} has no {FIT_FILE}: the variant did not finish")
    fit = json.loads((path / FIT_FILE).read_text(encoding="utf-8"))
    metrics = json.loads((path / TEST_METRICS_FILE).read_text(encoding="utf-8"))
    return RunFolder(path, ModelArtifact.load(path / ARTIFACT_FILE), fit,
                     {k: (math.nan if v is None else v) for k, v in metrics.items()},
                     pd.read_parquet(path / TEST_PREDICTIONS_FILE))
