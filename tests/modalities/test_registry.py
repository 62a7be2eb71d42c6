"""Every expected modality is registered; unknown names list the valid ones."""

from __future__ import annotations

import pytest

from modalities.base import create_modality, modality_names
from modalities.errors import UnknownNameError

EXPECTED_MODALITIES = ["audio", "ct", "image", "mri", "note", "tabular"]


def test_expected_modalities_registered() -> None:
    assert modality_names() == EXPECTED_MODALITIES


@pytest.mark.parametrize("name", EXPECTED_MODALITIES)
def test_each_builds_with_defaults(name: str) -> None:
    mod = create_modality(name)
    assert mod.name == name and mod.kind
    assert len(mod.spec_hash()) == 32
    assert mod.cache_key("abc") != mod.cache_key("abd")


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(UnknownNameError, match="valid names: audio, ct, image, mri, note"):
        create_modality("pet")
