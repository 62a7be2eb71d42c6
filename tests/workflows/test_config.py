"""Config recipes load, extend a base, take overrides, and reject bad keys clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from modalities.base import modality_names
from modalities.errors import ConfigError
from tests.model_recipes import load_recipe
from tests.recipes import load_cohort
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
    with pytest.raises(ConfigError) as err:
        cfg.cohort.build()
    assert str(err.value) == f"unknown modality 'pet'; valid names: {', '.join(modality_names())}"


@pytest.mark.parametrize("name", available_configs())
def test_lower_layer_test_recipes_match_load_config(name: str) -> None:
    """tests/recipes.py (for tests below workflows) reads what load_config reads."""
    overrides = ["train.batch_size=3", "cohort.modalities.mri=null"]
    want, got = load_config(name, overrides), load_recipe(name, overrides)
    assert (got.name, got.cohort, got.model, got.train) == (
        want.name, want.cohort, want.model, want.train
    )
    assert load_cohort(name, overrides) == want.cohort


# --------------------------------------------------------------------------- modality selection


def test_null_override_removes_a_modality() -> None:
    cfg = load_config("tiny", ["cohort.modalities.mri=null"])
    assert sorted(cfg.cohort.modalities) == ["ct", "note"]
    # The rest of the entry's settings are untouched.
    assert cfg.cohort.modalities["ct"].encoder["name"] == "tiny"


def test_base_inheritance_can_remove_a_modality(tmp_path: Path) -> None:
    recipe = tmp_path / "ct_notes.yaml"
    recipe.write_text("base: tiny\ncohort:\n  modalities:\n    mri: null\n")
    cfg = load_config(str(recipe))
    assert sorted(cfg.cohort.modalities) == ["ct", "note"]
    tiny = load_config("tiny").cohort.modalities["ct"].spec
    assert cfg.cohort.modalities["ct"].spec == tiny  # inherited from tiny
    # Without a base a null entry is simply absent.
    alone = tmp_path / "alone.yaml"
    alone.write_text("cohort:\n  modalities:\n    note: {}\n    mri: null\n")
    assert sorted(load_config(str(alone)).cohort.modalities) == ["note"]


def test_select_modalities_turns_a_list_into_overrides() -> None:
    from workflows.config import select_modalities

    over = select_modalities("tiny", ["train.lr=0.01"], "ct,note")
    assert over == ["train.lr=0.01", "cohort.modalities.mri=null"]
    assert sorted(load_config("tiny", over).cohort.modalities) == ["ct", "note"]
    assert select_modalities("tiny", None, None) == []
    with pytest.raises(ConfigError, match=r"pet not in config 'tiny''s modalities \(ct, mri"):
        select_modalities("tiny", None, "ct,pet")
    with pytest.raises(ConfigError, match="name at least one"):
        select_modalities("tiny", None, " , ")


def test_null_on_a_scalar_is_still_validated() -> None:
    """Only sections are removed by null; a required number stays required."""
    with pytest.raises(ConfigError, match=r"train\.n_boot"):
        load_config("tiny", ["train.n_boot=null"])


def test_invalid_config_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["ingest.workers=0", "train.lr=-1"])
    assert "\n" not in str(err.value) and "ingest.workers" in str(err.value)


# --------------------------------------------------------------------------- serve settings


def test_serve_deployments_carry_timezone_and_concurrency_limit() -> None:
    from workflows.serve import build_deployments

    nightly, score = build_deployments(
        "tiny", ["serve.timezone=Europe/Berlin", "serve.concurrency_limit=2"]
    )
    sched = nightly.schedules[0].schedule
    assert sched.cron == "30 2 * * *" and sched.timezone == "Europe/Berlin"
    assert nightly.concurrency_limit == 2
    assert str(nightly.concurrency_options.collision_strategy).endswith("CANCEL_NEW")
    assert score.concurrency_limit == 2


def test_unknown_timezone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_config("tiny", ["serve.timezone=Mars/Olympus"])


def test_a_resolved_config_loads_back_unchanged(tmp_path: Path) -> None:
    """The train flow writes the resolved config once; every variant's task and the torchrun
    worker read it back through the same loader."""
    import yaml

    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(load_config("tiny", ["train.batch_size=3"])
                                   .model_dump(mode="json")))
    got, want = load_config(str(path)), load_config("tiny", ["train.batch_size=3"])
    assert got == want and got.train.batch_size == 3
