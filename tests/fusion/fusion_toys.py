"""Tiny real encoders and synthetic batches for the fusion tests (no library mocks)."""

from __future__ import annotations

import torch
from torch import nn

from modalities.base import Tokens


class VectorTokens(nn.Module):
    """Per-token MLP over float features ``x`` (B, N, F) with ``mask`` (B, N)."""

    def __init__(self, n_features: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(nn.Linear(n_features, 32), nn.GELU(), nn.Linear(32, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tokens:
        return Tokens(self.net(x), mask.bool())


class IdTokens(nn.Module):
    """Embedding over token ids (B, L) with ``attention_mask`` (B, L)."""

    def __init__(self, vocab: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.emb = nn.Embedding(vocab, out_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        return Tokens(self.emb(input_ids), attention_mask.bool())


VOCAB = 20
DIMS = {"a": (5, 6), "b": (6, None), "c": (4, 3)}  # modality -> (tokens, features or ids)


def make_encoders(names: list[str]) -> dict[str, nn.Module]:
    """Toy encoders: ``a``/``c`` float-vector tokens, ``b`` token ids."""
    enc: dict[str, nn.Module] = {}
    for m in names:
        _, f = DIMS[m]
        enc[m] = IdTokens(VOCAB, 12) if f is None else VectorTokens(f, 10 + len(enc))
    return enc


def make_batch(
    names: list[str], b: int = 8, seed: int = 0, pad: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """Random inputs; with ``pad`` the last 1-2 tokens of some rows are padding."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for m in names:
        n, f = DIMS[m]
        mask = torch.ones(b, n, dtype=torch.bool)
        if pad:
            mask[1::2, -1] = False
            mask[2::4, -2] = False
        if f is None:
            ids = torch.randint(1, VOCAB, (b, n), generator=g)
            batch[m] = {"input_ids": ids, "attention_mask": mask}
        else:
            batch[m] = {"x": torch.randn(b, n, f, generator=g), "mask": mask}
    return batch


def all_present(names: list[str], b: int = 8) -> dict[str, torch.Tensor]:
    """Every modality present in every row."""
    return {m: torch.ones(b, dtype=torch.bool) for m in names}
