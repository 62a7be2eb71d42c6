"""FusionModel and the strategies: shapes, masking, missing modalities, order, gradients."""

from __future__ import annotations

import pytest
import torch
from fusion_toys import all_present, make_batch, make_encoders

from fusion import (
    FusionConfig,
    HeadConfig,
    ModelConfig,
    build_model,
    builtin_fusion_names,
    create_fusion,
    drop_modalities,
    fusion_names,
)
from modalities.errors import ConfigError, UnknownNameError

# The one hard-coded list: a strategy whose module fails to register must fail this test.
EXPECTED_FUSIONS = ["bilinear", "bottleneck", "concat", "cross_attention", "early", "gated", "late"]
FUSIONS = builtin_fusion_names()  # every other test parametrizes over the registry
SETS = [["a", "b"], ["a", "b", "c"]]
ATTENTION = {"cross_attention", "bottleneck", "early"}


def config_for(name: str, **cfg) -> ModelConfig:
    return ModelConfig(
        d_model=16,
        dropout=0.0,
        fusion=FusionConfig(name=name, layers=2, heads=2),
        head=HeadConfig(name="binary"),
        **cfg,
    )


def model_for(name: str, names: list[str], seed: int = 0, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config_for(name, **cfg), make_encoders(names))


def test_registry_lists_expected_strategies() -> None:
    assert FUSIONS == EXPECTED_FUSIONS
    assert set(EXPECTED_FUSIONS) <= set(fusion_names())  # plus any installed plugin


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        create_fusion("sum", 8, ["a", "b"])
    for name in fusion_names():
        assert name in str(err.value)


def test_unknown_option_is_config_error() -> None:
    with pytest.raises(ConfigError, match="latents"):
        create_fusion("late", 8, ["a", "b"], latents=4)
    assert create_fusion("bottleneck", 8, ["a", "b"], latents=4).latents.shape == (4, 8)


@pytest.mark.parametrize("names", SETS, ids=lambda s: "+".join(s))
@pytest.mark.parametrize("name", FUSIONS)
def test_shapes_and_explainability(name: str, names: list[str]) -> None:
    model = model_for(name, names).eval()
    out = model(make_batch(names), all_present(names), labels=torch.ones(8))
    assert out["logits"].shape == (8,)
    assert out["embedding"].shape == (8, 16)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    contrib = torch.stack([out["contributions"][m] for m in names], 1)
    assert torch.allclose(contrib.sum(1), torch.ones(8), atol=1e-5)
    if name in ATTENTION:
        assert out["attention"], "attention weights are kept in eval mode"
    if name == "cross_attention":
        assert out["attention"]["a<-b"].shape == (8, 2, 5, 6)  # (B, layers, N_a, N_b)
        assert len(out["attention"]) == len(names) * (len(names) - 1)


@pytest.mark.parametrize("name", FUSIONS)
def test_padded_tokens_do_not_change_outputs(name: str) -> None:
    names = ["a", "b", "c"]
    model = model_for(name, names).eval()
    batch = make_batch(names)
    present = all_present(names)
    ref = model(batch, present)["logits"]
    changed = make_batch(names)
    for m in ("a", "c"):
        mask = changed[m]["mask"]
        changed[m]["x"] = torch.where(mask.unsqueeze(-1), changed[m]["x"], 1e3)
    changed["b"]["input_ids"] = torch.where(
        changed["b"]["attention_mask"], changed["b"]["input_ids"], 3
    )
    assert torch.allclose(model(changed, present)["logits"], ref, atol=1e-5)


@pytest.mark.parametrize("name", FUSIONS)
def test_absent_modality_does_not_change_outputs(name: str) -> None:
    names = ["a", "b", "c"]
    model = model_for(name, names).eval()
    present = all_present(names)
    present["b"] = torch.tensor([True, False] * 4)
    present["c"] = torch.tensor([False, False, True, True] * 2)
    batch = make_batch(names, seed=1)
    ref = model(batch, present)
    assert torch.isfinite(ref["logits"]).all()
    other = make_batch(names, seed=2)  # different values everywhere...
    for m in ("b", "c"):  # ...but identical present rows of b and c, and all of a
        keep = present[m]
        for k, v in other[m].items():
            v[keep] = batch[m][k][keep]
    other["a"] = batch["a"]
    out = model(other, present)
    assert torch.allclose(out["logits"], ref["logits"], atol=1e-5)
    for m in ("b", "c"):
        assert (out["contributions"][m][~present[m]] == 0).all()


@pytest.mark.parametrize("name", FUSIONS)
def test_modality_absent_from_whole_batch(name: str) -> None:
    names = ["a", "b", "c"]
    model = model_for(name, names).eval()
    batch = make_batch(names)
    present = all_present(names)
    present["c"] = torch.zeros(8, dtype=torch.bool)
    ref = model(batch, present)["logits"]
    del batch["c"]
    del present["c"]
    out = model(batch, present)["logits"]
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("name", FUSIONS)
def test_modality_order_does_not_matter(name: str) -> None:
    names = ["a", "b", "c"]
    model = model_for(name, names).eval()
    batch, present = make_batch(names), all_present(names)
    present["a"] = torch.tensor([True, False] * 4)
    ref = model(batch, present)["logits"]
    rev_batch = {m: batch[m] for m in reversed(names)}
    rev_present = {m: present[m] for m in reversed(names)}
    assert torch.equal(model(rev_batch, rev_present)["logits"], ref)
    # Built from a reversed encoder dict, parameters are registered in the same order.
    torch.manual_seed(0)
    enc = make_encoders(names)
    reordered = build_model(config_for(name), {m: enc[m] for m in reversed(names)})
    assert list(reordered.state_dict()) == list(model_for(name, names).state_dict())


@pytest.mark.parametrize("name", FUSIONS)
def test_gradients_reach_every_encoder(name: str) -> None:
    names = ["a", "b", "c"]
    model = model_for(name, names).train()
    present = all_present(names)
    present["b"][::2] = False  # absent rows (all-masked keys) must not give NaN gradients
    present["c"][1::4] = False
    out = model(make_batch(names), present, labels=torch.ones(8))
    out["loss"].backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    for m in names:
        grads = [p.grad for p in model.encoders[m].parameters()]
        assert all(g is not None for g in grads), m
        assert sum(g.abs().sum() for g in grads) > 0, m


@pytest.mark.parametrize("name", FUSIONS)
def test_unimodal_model_is_the_same_class(name: str) -> None:
    model = model_for(name, ["a"]).eval()
    out = model(make_batch(["a"]), all_present(["a"]), labels=torch.zeros(8))
    assert out["logits"].shape == (8,)
    assert torch.allclose(out["contributions"]["a"], torch.ones(8))


def test_row_without_any_modality_is_refused() -> None:
    names = ["a", "b"]
    model = model_for("concat", names)
    present = all_present(names)
    present["a"][0] = present["b"][0] = False
    with pytest.raises(ValueError, match="no modality"):
        model(make_batch(names), present)


def test_modality_dropout_keeps_one_modality_per_row() -> None:
    torch.manual_seed(0)
    present = {m: torch.rand(4000) > 0.3 for m in "abc"}
    present["a"] |= ~(present["b"] | present["c"])  # every row has something
    dropped = drop_modalities(present, 0.9)
    stacked = torch.stack([dropped[m] for m in "abc"], 1)
    assert stacked.any(1).all()
    for m in "abc":
        assert not (dropped[m] & ~present[m]).any()  # never resurrects an absent one
    # Real drops happen: far fewer modalities survive than were present.
    assert stacked.sum() < 0.5 * torch.stack(list(present.values()), 1).sum()
    assert drop_modalities(present, 0.0) is present


def test_modality_dropout_applies_in_training_only() -> None:
    names = ["a", "b"]
    model = model_for("concat", names, modality_dropout=0.5)
    batch, present = make_batch(names, b=64), all_present(names, b=64)
    out = model.train()(batch, present)
    n_present = torch.stack([out["present"][m] for m in names], 1).sum()
    assert n_present < 128
    out = model.eval()(batch, present)
    assert torch.stack([out["present"][m] for m in names], 1).all()


def test_missing_out_dim_is_config_error() -> None:
    enc = make_encoders(["a", "b"])
    del enc["a"].out_dim
    with pytest.raises(ConfigError, match="out_dim"):
        build_model(ModelConfig(d_model=8), enc)
    model = build_model(ModelConfig(d_model=8), enc, encoder_dims={"a": 10})
    assert model.projections["a"].linear.in_features == 10


def test_positions_limit_is_config_error() -> None:
    model = model_for("concat", ["a", "b"], max_positions=4)  # a has 5 tokens
    with pytest.raises(ConfigError, match="max_positions"):
        model(make_batch(["a", "b"]), all_present(["a", "b"]))
