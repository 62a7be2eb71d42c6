"""A whole shipped recipe (cohort, model, train) for tests of fusion and above, without
importing ``workflows`` (see tests/recipes.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fusion.config import ModelConfig
from fusion.train import TrainConfig
from modalities.cohort import CohortConfig
from tests.recipes import recipe_data


@dataclass(frozen=True)
class Recipe:
    """The sections of a resolved recipe that the lower layers consume."""

    name: str
    cohort: CohortConfig
    model: ModelConfig
    train: TrainConfig

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        """The resolved config as ``clinfuse train`` writes it (these sections only)."""
        return {"name": self.name, "cohort": self.cohort.model_dump(mode=mode),
                "model": self.model.model_dump(mode=mode),
                "train": self.train.model_dump(mode=mode)}  # fmt: skip


def load_recipe(name: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """A shipped recipe with overrides, validated section by section."""
    data = recipe_data(name, overrides)
    return Recipe(
        name=data["name"],
        cohort=CohortConfig.model_validate(data["cohort"]),
        model=ModelConfig.model_validate(data.get("model") or {}),
        train=TrainConfig.model_validate(data.get("train") or {}),
    )
