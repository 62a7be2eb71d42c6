"""The information-split XOR test: the label is the XOR of a property of modality A and a
property of modality B, so neither modality alone carries any information about it.

Unimodal models must stay at chance; fusion strategies that model interactions must solve it;
late fusion (a sum of per-modality decisions) cannot, by construction.
"""

from __future__ import annotations

import pytest
import torch
from fusion_toys import IdTokens, VectorTokens

from fusion import FusionConfig, HeadConfig, ModelConfig, build_model

N_A, F_A, N_B, VOCAB = 5, 6, 6, 20
FUSION = ["concat", "gated", "bilinear", "cross_attention", "bottleneck", "early"]


def xor_data(n: int, seed: int) -> tuple[dict, dict, torch.Tensor]:
    """A: one marker token (feature 1 = 3) among noise tokens; its feature 0 has sign s_a.
    B: token ids; s_b = whether id 1 occurs. Label = s_a XOR s_b. Rows are padded randomly."""
    g = torch.Generator().manual_seed(seed)
    s_a = torch.randint(0, 2, (n,), generator=g).bool()
    s_b = torch.randint(0, 2, (n,), generator=g).bool()
    rows = torch.arange(n)
    x = torch.randn(n, N_A, F_A, generator=g)
    x[..., 1] *= 0.3
    a_len = torch.randint(2, N_A + 1, (n,), generator=g)
    a_mask = torch.arange(N_A) < a_len.unsqueeze(1)
    pos = (torch.rand(n, generator=g) * a_len).long()
    x[rows, pos, 0] = torch.where(s_a, 1.0, -1.0) * (1.0 + torch.rand(n, generator=g))
    x[rows, pos, 1] = 3.0
    ids = torch.randint(2, VOCAB, (n, N_B), generator=g)
    b_len = torch.randint(3, N_B + 1, (n,), generator=g)
    b_mask = torch.arange(N_B) < b_len.unsqueeze(1)
    ids[rows, (torch.rand(n, generator=g) * b_len).long()] = torch.where(s_b, 1, ids[:, 0])
    batch = {
        "a": {"x": x, "mask": a_mask},
        "b": {"input_ids": ids, "attention_mask": b_mask},
    }
    present = {m: torch.ones(n, dtype=torch.bool) for m in batch}
    return batch, present, (s_a ^ s_b).float()


def rows(batch: dict, present: dict, idx: torch.Tensor, names: list[str]) -> tuple[dict, dict]:
    return (
        {m: {k: v[idx] for k, v in batch[m].items()} for m in names},
        {m: present[m][idx] for m in names},
    )


def train_and_score(fusion: str, names: list[str], steps: int = 400) -> float:
    """Train a tiny model with a plain Adam loop; return held-out accuracy."""
    torch.manual_seed(0)
    encoders = {"a": VectorTokens(F_A, 16), "b": IdTokens(VOCAB, 16)}
    cfg = ModelConfig(
        d_model=32,
        dropout=0.0,
        fusion=FusionConfig(name=fusion, layers=1, heads=2),
        head=HeadConfig(name="binary"),
    )
    model = build_model(cfg, {m: encoders[m] for m in names})
    train, train_present, y = xor_data(2048, seed=1)
    test, test_present, y_test = xor_data(1024, seed=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        batch, present = rows(train, train_present, idx, names)
        loss = model(batch, present, labels=y[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        batch, present = rows(test, test_present, torch.arange(len(y_test)), names)
        logits = model(batch, present)["logits"]
    return ((logits > 0).float() == y_test).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["a", "b"])
def test_unimodal_models_stay_at_chance(name: str) -> None:
    assert train_and_score("concat", [name]) < 0.65


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSION)
def test_fusion_strategies_solve_xor(fusion: str) -> None:
    assert train_and_score(fusion, ["a", "b"]) >= 0.95


@pytest.mark.slow
def test_late_fusion_cannot_solve_xor() -> None:
    # A sum of per-modality decisions can get at most 3 of the 4 XOR cells right.
    assert train_and_score("late", ["a", "b"]) < 0.8
