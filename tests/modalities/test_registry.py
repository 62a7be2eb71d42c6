"""Every expected modality is registered; unknown names list the valid ones."""

from __future__ import annotations

import pytest

from modalities.base import builtin_modality_names, create_modality, modality_names
from modalities.errors import UnknownNameError

# The one hard-coded list: a modality whose module fails to register must fail this test.
EXPECTED_MODALITIES = ["audio", "ct", "image", "mri", "note", "tabular"]


def test_expected_modalities_registered() -> None:
    assert builtin_modality_names() == EXPECTED_MODALITIES
    assert set(EXPECTED_MODALITIES) <= set(modality_names())  # plus any installed plugin


@pytest.mark.parametrize("name", builtin_modality_names())
def test_each_builds_with_defaults(name: str) -> None:
    mod = create_modality(name)
    assert mod.name == name and mod.kind
    assert len(mod.spec_hash()) == 32
    assert mod.cache_key("abc") != mod.cache_key("abd")


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(UnknownNameError) as err:
        create_modality("pet")
    assert err.value.valid == modality_names()
    assert str(err.value).endswith("valid names: " + ", ".join(modality_names()))
