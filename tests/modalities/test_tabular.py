"""Tabular labs/vitals: parsing, standardisation, missing indicators, encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.errors import ConfigError, InputRejected, ReasonCode, UnknownNameError
from modalities.tabular import TABULAR_ENCODERS, TabularModality

FEATURES = [
    {"name": "heart_rate", "mean": 80, "std": 10},
    {"name": "troponin", "mean": 0.02, "std": 0.01},
    "lactate",
]


@pytest.fixture
def mod() -> TabularModality:
    return TabularModality(spec={"features": FEATURES})


def test_standardisation_and_indicators(mod: TabularModality) -> None:
    raw = mod.load('{"heart_rate": 100, "troponin": 0.05, "lactate": 1.5}')
    out = mod.preprocess(raw)
    assert out.dtype == np.float32 and out.shape == (6,)
    assert np.allclose(out, [2.0, 3.0, 1.5, 0, 0, 0])


@pytest.mark.parametrize(
    "payload",
    [
        {"heart_rate": 90, "troponin": None, "lactate": 2},
        {"heart_rate": 90, "lactate": 2},  # absent key
        {"heart_rate": 90, "troponin": "", "lactate": "2"},  # empty / numeric strings
        {"heart_rate": 90, "troponin": float("nan"), "lactate": 2.0},
    ],
)
def test_missing_value_has_indicator_not_fake_zero(mod: TabularModality, payload: dict) -> None:
    out = mod.preprocess(mod.load(json.dumps(payload)))
    assert np.allclose(out, [1.0, 0.0, 2.0, 0, 1, 0])
    # A real value equal to the mean also gives 0, but without the flag: distinguishable.
    at_mean = mod.preprocess(mod.load('{"heart_rate": 90, "troponin": 0.02, "lactate": 2}'))
    assert at_mean[1] == out[1] and at_mean[4] != out[4]


def test_json_file_source_and_canonical_hash(tmp_path: Path, mod: TabularModality) -> None:
    path = tmp_path / "labs.json"
    path.write_text('{"lactate": 1, "heart_rate": 70}')
    assert np.allclose(mod.preprocess(mod.load(path))[:3], [-1.0, 0.0, 1.0])
    same = mod.content_hash('{ "heart_rate": 70,  "lactate": 1 }')
    assert mod.content_hash(path) == same != mod.content_hash('{"heart_rate": 71, "lactate": 1}')


def test_resolve_keeps_inline_json(tmp_path: Path, mod: TabularModality) -> None:
    assert mod.resolve('{"heart_rate": 1}', tmp_path, "row 1") == '{"heart_rate": 1}'
    (tmp_path / "a.json").write_text("{}")
    assert mod.resolve("a.json", tmp_path, "row 1") == tmp_path / "a.json"


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ('{"heart_rate": 1', ReasonCode.UNREADABLE),
        ("[1, 2]", ReasonCode.UNSUPPORTED_FORMAT),
        ('{"heart_rate": "high"}', ReasonCode.UNSUPPORTED_FORMAT),
        ('{"heart_rate": [1]}', ReasonCode.UNSUPPORTED_FORMAT),
        ('{"heart_rate": Infinity}', ReasonCode.NON_FINITE_VALUES),
        ('{"HR": 80, "trop": 0.1}', ReasonCode.UNSUPPORTED_FORMAT),  # no configured key
    ],
)
def test_bad_inputs_rejected(tmp_path: Path, mod: TabularModality, source: str, code) -> None:
    path = tmp_path / "x.json"
    path.write_text(source)
    with pytest.raises(InputRejected) as err:
        mod.load(path)
    assert err.value.code == code
    assert "high" not in err.value.message  # values never appear in messages


def test_missing_file_and_empty_features(tmp_path: Path) -> None:
    with pytest.raises(InputRejected) as err:
        TabularModality(spec={"features": ["a"]}).load(tmp_path / "none.json")
    assert err.value.code == ReasonCode.MISSING_FILE
    with pytest.raises(ConfigError, match="features is empty"):
        TabularModality().load('{"a": 1}')
    with pytest.raises(ValueError, match="std"):
        TabularModality(spec={"features": [{"name": "a", "std": 0}]})
    with pytest.raises(ValueError, match="unique"):
        TabularModality(spec={"features": ["a", "a"]})


def test_spec_changes_cache_key() -> None:
    a = TabularModality(spec={"features": ["a", "b"]})
    b = TabularModality(spec={"features": [{"name": "a", "mean": 1}, "b"]})
    assert a.cache_key("h") != b.cache_key("h")


@pytest.mark.parametrize("name", sorted(TABULAR_ENCODERS))
def test_encoders(mod: TabularModality, name: str) -> None:
    enc_mod = TabularModality(
        spec={"features": FEATURES}, encoder={"name": name, "n_tokens": 2, "out_dim": 8}
    )
    items = [
        mod.preprocess(mod.load('{"heart_rate": 90, "lactate": 2}')),
        mod.preprocess(mod.load('{"heart_rate": 90, "troponin": 0.02, "lactate": 2}')),
    ]
    batch = enc_mod.collate(items)
    assert batch["x"].shape == (2, 6) and batch["x"].dtype == torch.float32
    enc = enc_mod.encoder().eval()
    tok = enc(**batch)
    n = 2 if name == "mlp" else 3
    assert tok.values.shape == (2, n, 8) and tok.mask.all() and enc.out_dim == 8
    # Missing troponin vs troponin at its mean (same standardised value 0) must differ.
    assert not torch.allclose(tok.values[0], tok.values[1])
    tok.values.sum().backward()


def test_unknown_encoder(mod: TabularModality) -> None:
    with pytest.raises(UnknownNameError, match="valid names: ft, mlp"):
        TabularModality(spec={"features": FEATURES}, encoder={"name": "xgboost"}).encoder()
