"""Keyed-hash pseudonyms: stable, key-dependent, and never the raw ID."""

from __future__ import annotations

import pytest

from modalities.errors import ConfigError
from modalities.pseudonym import DEMO_KEY, KEY_ENV, Pseudonymizer


def test_stable_and_key_dependent() -> None:
    a, b = Pseudonymizer("k" * 20), Pseudonymizer("j" * 20)
    assert a("MRN001") == a("MRN001") == a(" MRN001 ")
    assert a("MRN001") != a("MRN002")
    assert a("MRN001") != b("MRN001")
    assert a("MRN001").startswith("P") and "MRN001" not in a("MRN001")
    assert len(a("x")) == 17


def test_unset_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        Pseudonymizer.from_env()
    assert Pseudonymizer.from_env(allow_demo=True)("x") == Pseudonymizer(DEMO_KEY)("x")


def test_short_key_rejected() -> None:
    with pytest.raises(ConfigError, match="too short"):
        Pseudonymizer("short")
