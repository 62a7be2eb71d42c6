"""Heads: losses match torch's functional losses; contrastive InfoNCE learns alignment."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fusion_toys import VectorTokens

from fusion import FusionOutput, HeadConfig, ModelConfig, build_model, create_head, head_names
from fusion.heads import EXPECTED_HEADS
from modalities.errors import ConfigError, UnknownNameError


def fused(b: int = 6, d: int = 8, seed: int = 0) -> FusionOutput:
    g = torch.Generator().manual_seed(seed)
    pooled = {m: torch.randn(b, d, generator=g) for m in ("a", "b")}
    return FusionOutput(embedding=torch.randn(b, d, generator=g), pooled=pooled)


def present(b: int = 6) -> dict[str, torch.Tensor]:
    return {m: torch.ones(b, dtype=torch.bool) for m in ("a", "b")}


def test_registry_lists_expected_heads() -> None:
    assert head_names() == EXPECTED_HEADS


def test_unknown_head_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        create_head("regression", 8, ["a"])
    for name in EXPECTED_HEADS:
        assert name in str(err.value)


def test_missing_required_option_is_config_error() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_head("multiclass", 8, ["a"])
    with pytest.raises(ConfigError, match="class_weights"):
        create_head("multiclass", 8, ["a"], num_classes=3, class_weights=[1.0, 2.0])


def test_binary_matches_bce_with_pos_weight() -> None:
    torch.manual_seed(0)
    head = create_head("binary", 8, ["a", "b"], pos_weight=3.0)
    out, labels = fused(), torch.tensor([0, 1, 1, 0, 1, 0])
    res = head(out, present(), labels)
    assert res["logits"].shape == (6,)
    expected = F.binary_cross_entropy_with_logits(
        head.proj(out.embedding).squeeze(-1), labels.float(), pos_weight=torch.tensor([3.0])
    )
    assert torch.allclose(res["loss"], expected)
    assert "loss" not in head(out, present())


def test_multiclass_matches_cross_entropy_with_class_weights() -> None:
    torch.manual_seed(0)
    w = [1.0, 2.0, 0.5]
    head = create_head("multiclass", 8, ["a", "b"], num_classes=3, class_weights=w)
    out, labels = fused(), torch.tensor([0, 1, 2, 2, 1, 0])
    res = head(out, present(), labels)
    assert res["logits"].shape == (6, 3)
    expected = F.cross_entropy(head.proj(out.embedding), labels, weight=torch.tensor(w))
    assert torch.allclose(res["loss"], expected)


def test_multilabel_matches_bce_over_labels() -> None:
    torch.manual_seed(0)
    head = create_head("multilabel", 8, ["a", "b"], labels=["nodule", "effusion", "edema"])
    out = fused()
    labels = torch.randint(0, 2, (6, 3))
    res = head(out, present(), labels)
    assert res["logits"].shape == (6, 3)
    expected = F.binary_cross_entropy_with_logits(head.proj(out.embedding), labels.float())
    assert torch.allclose(res["loss"], expected)


def test_late_branches_average_over_present_only() -> None:
    torch.manual_seed(0)
    head = create_head("binary", 8, ["a", "b"])
    out = fused()
    out.branches = {"a": torch.randn(6, 8), "b": torch.randn(6, 8)}
    pres = present()
    pres["b"][:3] = False
    logits = head(out, pres)["logits"]
    la, lb = (head.proj(out.branches[m]).squeeze(-1) for m in ("a", "b"))
    assert torch.allclose(logits[:3], la[:3])
    assert torch.allclose(logits[3:], (la[3:] + lb[3:]) / 2)


def test_contrastive_matches_symmetric_infonce_on_rows_with_both() -> None:
    torch.manual_seed(0)
    head = create_head("contrastive", 8, ["a", "b"], proj_dim=4, temperature=0.1)
    out, pres = fused(), present()
    pres["a"][0] = False
    res = head(out, pres)
    assert res["logits"].shape == (6, 6)
    za = F.normalize(head.proj["a"](out.pooled["a"]), dim=-1)[1:]
    zb = F.normalize(head.proj["b"](out.pooled["b"]), dim=-1)[1:]
    sim = za @ zb.T / 0.1
    target = torch.arange(5)
    expected = (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
    assert torch.allclose(res["loss"], expected, atol=1e-5)


def test_contrastive_pair_must_be_model_modalities() -> None:
    with pytest.raises(ConfigError, match="pair"):
        create_head("contrastive", 8, ["a", "b"], pair=["a", "note"])


def test_contrastive_loss_decreases_when_aligned() -> None:
    """Paired views of one latent vector: training the InfoNCE model aligns them."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    mix_a, mix_b = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)

    def views(n: int) -> tuple[dict, dict]:
        z = torch.randn(n, 2, 4, generator=g)  # 2 tokens per sample
        batch = {
            "a": {"x": z @ mix_a + 0.05 * torch.randn(n, 2, 6, generator=g)},
            "b": {"x": z @ mix_b + 0.05 * torch.randn(n, 2, 6, generator=g)},
        }
        for m in batch:
            batch[m]["mask"] = torch.ones(n, 2, dtype=torch.bool)
        return batch, {m: torch.ones(n, dtype=torch.bool) for m in batch}

    cfg = ModelConfig(d_model=16, dropout=0.0, head=HeadConfig(name="contrastive"))
    model = build_model(cfg, {"a": VectorTokens(6, 16), "b": VectorTokens(6, 16)})
    test_batch, test_present = views(64)
    with torch.no_grad():
        before = model.eval()(test_batch, test_present)["loss"].item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        batch, pres = views(64)
        loss = model(batch, pres)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model.eval()(test_batch, test_present)
    assert out["loss"].item() < 0.5 * before
    top1 = (out["logits"].argmax(1) == torch.arange(64)).float().mean()
    assert top1 > 0.5  # chance is 1/64
