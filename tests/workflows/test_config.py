"""Config recipes load, extend a base, take overrides, and reject bad keys clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from modalities.errors import ConfigError
from workflows.config import available_configs, load_config


def test_shipped_recipes_load() -> None:
    assert {"default", "tiny", "production"} <= set(available_configs())
    for name in available_configs():
        cfg = load_config(name)
        assert cfg.name == name and cfg.cohort.modalities


def test_tiny_extends_default_and_overrides_apply() -> None:
    cfg = load_config("tiny", ["ingest.workers=3", "cohort.modalities.ct.spec.size=[16,16,16]"])
    assert cfg.cohort.modalities["ct"].spec["size"] == [16, 16, 16]
    assert cfg.cohort.modalities["ct"].spec["spacing"] == [4.0, 4.0, 4.0]
    assert cfg.cohort.modalities["ct"].encoder["name"] == "tiny"
    assert "note" in cfg.cohort.modalities  # inherited from default
    assert cfg.ingest.workers == 3


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["ingest.workerz=3"], "ingest.workerz"),
        (["ingest.workers=0"], "ingest.workers"),
        (["cohort.task=regression"], "cohort.task"),
        (["nonsense"], "key.path=value"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", overrides)


def test_unknown_recipe_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"valid names: .*tiny"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cohort: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_unknown_modality_type_lists_valid_names() -> None:
    cfg = load_config("tiny", ["cohort.modalities.pet={}"])
    with pytest.raises(ConfigError, match=r"unknown modality 'pet'; valid names: .*ct"):
        cfg.cohort.build()
