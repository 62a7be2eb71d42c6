"""The shipped recipes (configs/*.yaml) for tests below ``workflows``, without importing it.

``workflows.config.load_config`` is the real loader; tests of modalities, fusion, scoring
and registry must not import a higher layer (tests/test_layers.py), so they read recipes
here: the ``base`` chain merged, ``--set``-style overrides applied, each section validated
into the lower layers' own typed models. This module needs only ``modalities`` (cohorts);
``tests.model_recipes`` adds the model and training sections (``fusion``).
``tests/workflows/test_config.py`` checks both against ``load_config`` for every shipped
recipe, so they cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modalities.cohort import CohortConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if v is None and isinstance(out.get(k), dict):
            out.pop(k)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def recipe_data(name: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """configs/<name>.yaml over its base chain, then ``a.b=value`` overrides (YAML values)."""
    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()) or {}
    base = data.pop("base", None)
    data.setdefault("name", name)
    if base:
        data = _merge(recipe_data(base), data)
    for item in overrides:
        key, _, raw = item.partition("=")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
        if node[leaf] is None:
            node.pop(leaf)
    mods = data.get("cohort", {}).get("modalities", {})
    data["cohort"]["modalities"] = {k: v for k, v in mods.items() if v is not None}
    return data


def load_cohort(name: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> CohortConfig:
    """The ``cohort`` section of a shipped recipe with overrides, validated."""
    return CohortConfig.model_validate(recipe_data(name, overrides)["cohort"])
