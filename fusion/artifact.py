"""``ModelArtifact``: everything needed to rebuild and score a trained model, typed.

Training writes it (``artifact.json`` in a run folder), the registry stores it as the
``config`` of a logged model (``config.json``, see docs/mlflow.md) and ``fusion.predictor``
rebuilds the model from it. It serialises to the same JSON the hand-built predictor config
dict had (``cohort``, ``model``, ``modalities``, ``threshold``, ``prior``, ``label_names``,
``task``, ``reference``), so models logged before it load unchanged. Tests and benchmarks
build one through ``ModelArtifact.build``, never by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fusion.config import ModelConfig
from modalities.cohort import CohortConfig
from modalities.errors import ConfigError


class ModelArtifact(BaseModel):
    """The saved, resolved description of one trained model (no weights, no PHI).

    ``cohort`` carries the input specs of every modality (what preprocessing must match),
    ``modalities`` the subset this model reads, ``prior`` the training prevalence (binary: a
    float; multiclass/multilabel: one value per class/label) scored for rows that have none
    of the model's modalities, ``reference`` the drift reference batch scoring compares
    against (test-split score histogram and presence rates; absent in older models).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    cohort: CohortConfig
    model: ModelConfig
    modalities: list[str] = Field(min_length=1)
    task: str
    threshold: float = 0.5
    prior: float | list[float] = 0.5
    label_names: list[str] | None = None
    reference: dict[str, Any] | None = None

    @classmethod
    def build(
        cls,
        cohort: CohortConfig,
        model: ModelConfig,
        modalities: Sequence[str],
        *,
        threshold: float = 0.5,
        prior: float | Sequence[float] = 0.5,
        label_names: Sequence[str] | None = None,
        reference: Mapping[str, Any] | None = None,
    ) -> ModelArtifact:
        """The one constructor: the task comes from the cohort, modalities are sorted."""
        return cls(
            cohort=cohort, model=model, modalities=sorted(modalities), task=cohort.task,
            threshold=float(threshold),
            prior=float(prior) if isinstance(prior, int | float) else [float(p) for p in prior],
            label_names=list(label_names) if label_names is not None else None,
            reference=dict(reference) if reference is not None else None,
        )

    @classmethod
    def from_config(cls, config: ModelArtifact | Mapping[str, Any], what: str = "model"
                    ) -> ModelArtifact:
        """Validate a saved config dict (``config.json``'s ``config``, ``artifact.json``)."""
        if isinstance(config, ModelArtifact):
            return config
        try:
            return cls.model_validate(dict(config))
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}"
                                 for e in err.errors())
            raise ConfigError(f"{what}'s saved config is invalid: {problems}") from None

    def to_config(self) -> dict[str, Any]:
        """The JSON-ready dict stored with the model (``config.json``'s ``config``)."""
        return self.model_dump(mode="json")

    def save(self, path: Path) -> None:
        """Write ``path`` atomically (readers never see half a file)."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_config(), indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ModelArtifact:
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; it is written when a variant finishes")
        return cls.from_config(json.loads(path.read_text(encoding="utf-8")), str(path))

