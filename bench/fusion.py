"""Fusion cost: forward+backward time of each strategy at realistic token counts, and the
share of a training step spent in fusion versus the encoders.

Tokens: CT 4x4x4 = 64 (MONAI DenseNet121-3D at 64^3 with the last pooling removed, 1024-d),
note 128 (a MiniLM-sized BERT, random init, 384-d), audio 50 (a conv stack over 100 log-mel
frames, 256-d). The "fusion" part is everything after the encoders: projections + strategy +
head. Baseline for the ratio column: ``concat``.

    python bench/fusion.py                      # CPU, batch 16, d_model 256
    python bench/fusion.py --device cuda        # bf16 autocast
    python bench/fusion.py --no-encoders        # fusion timings only (quick)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from fusion import FusionConfig, ModelConfig, build_model, fusion_names
from fusion.device import autocast as device_autocast
from modalities.base import Tokens

TOKENS = {"ct": (64, 1024), "note": (128, 384), "audio": (50, 256)}


class CTEncoder(nn.Module):
    """DenseNet121-3D features; transition3's pooling removed so 64^3 gives 4^3 tokens."""

    def __init__(self) -> None:
        super().__init__()
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=1)
        net.features.transition3.pool = nn.Identity()
        self.features = net.features
        self.out_dim = 1024

    def forward(self, x: torch.Tensor) -> Tokens:
        v = self.features(x).flatten(2).transpose(1, 2)
        return Tokens(v, torch.ones(v.shape[:2], dtype=torch.bool, device=v.device))


class NoteEncoder(nn.Module):
    """A randomly initialised BERT of all-MiniLM-L6-v2's size (no download)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
        )
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.out_dim = 384

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return Tokens(out, attention_mask.bool())


class AudioEncoder(nn.Module):
    """Two 1-D convs over log-mel frames (64 mels x 100 frames -> 50 tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(64, 256, 3, padding=1), nn.GELU(), nn.Conv1d(256, 256, 3, stride=2, padding=1)
        )
        self.out_dim = 256

    def forward(self, mel: torch.Tensor) -> Tokens:
        v = self.net(mel).transpose(1, 2)
        return Tokens(v, torch.ones(v.shape[:2], dtype=torch.bool, device=v.device))


def inputs(b: int, device: torch.device, ct_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Random encoder inputs of the bench's shapes."""
    mask = torch.ones(b, 128, dtype=torch.bool, device=device)
    mask[:, 100:] = False  # some padding, as real notes have
    return {
        "ct": {"x": torch.randn(b, 1, ct_size, ct_size, ct_size, device=device)},
        "note": {
            "input_ids": torch.randint(0, 30000, (b, 128), device=device),
            "attention_mask": mask,
        },
        "audio": {"mel": torch.randn(b, 64, 100, device=device)},
    }


def timed(fn: Callable[[], None], reps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    times = []
    for i in range(warmup + reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ct-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="timed runs of the encoder stack")
    p.add_argument("--fusion-reps", type=int, default=7, help="timed runs per strategy")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--strategies", nargs="*", default=None)
    p.add_argument("--no-encoders", action="store_true", help="skip the encoder stack timing")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    def autocast() -> contextlib.AbstractContextManager:
        return device_autocast(device, True)  # bf16 on CUDA, a no-op on CPU

    b = args.batch
    names = sorted(TOKENS)
    present = {m: torch.ones(b, dtype=torch.bool, device=device) for m in names}
    labels = torch.randint(0, 2, (b,), device=device).float()
    dims = {m: d for m, (_, d) in TOKENS.items()}

    enc_time = None
    if not args.no_encoders:
        encoders = (
            nn.ModuleDict({"ct": CTEncoder(), "note": NoteEncoder(), "audio": AudioEncoder()})
            .to(device)
            .train()
        )
        batch = inputs(b, device, args.ct_size)
        got = {}

        def encoders_step() -> None:
            encoders.zero_grad(set_to_none=True)
            with autocast():
                toks = {m: encoders[m](**batch[m]) for m in names}
                loss = sum(t.values.float().mean() for t in toks.values())
            loss.backward()
            got.update({m: tuple(t.values.shape[1:]) for m, t in toks.items()})

        enc_time = timed(encoders_step, args.reps, args.warmup, device)
        assert got == {m: TOKENS[m] for m in names}, got

    raw = {}
    for m, (n, d) in TOKENS.items():
        mask = torch.ones(b, n, dtype=torch.bool, device=device)
        if m == "note":
            mask[:, 100:] = False
        raw[m] = Tokens(torch.randn(b, n, d, device=device, requires_grad=True), mask)

    rows = []
    for name in args.strategies or fusion_names():
        cfg = ModelConfig(
            d_model=args.d_model,
            fusion=FusionConfig(name=name, layers=args.layers, heads=args.heads),
        )
        # Encoders are not run here: Identity placeholders only satisfy the constructor.
        model = build_model(cfg, {m: nn.Identity() for m in names}, encoder_dims=dims)
        model.to(device).train()

        def fusion_step(model: nn.Module = model) -> None:
            model.zero_grad(set_to_none=True)
            with autocast():
                tokens = {m: model.projections[m](raw[m]) for m in names}
                fused = model.fusion(tokens, present)
                loss = model.head(fused, present, labels)["loss"]
            loss.backward()

        t = timed(fusion_step, args.fusion_reps, args.warmup, device)
        n_params = sum(p.numel() for p in model.parameters())
        rows.append((name, t, n_params))

    base = dict((r[0], r[1]) for r in rows).get("concat", rows[0][1])
    where = f"{device.type}" + (" bf16" if device.type == "cuda" else f", {args.threads} threads")
    print(
        f"# fusion bench: batch {b}, d_model {args.d_model}, layers {args.layers}, tokens "
        + ", ".join(f"{m} {n}x{d}" for m, (n, d) in TOKENS.items())
        + f"; {where}; median of {args.fusion_reps} (encoders {args.reps})"
    )
    if enc_time is not None:
        print(
            f"# encoder stack fwd+bwd (DenseNet121-3D {args.ct_size}^3 + BERT-6L + conv): "
            f"{enc_time * 1000:.0f} ms"
        )
    header = f"{'strategy':<16}{'params':>10}{'fwd+bwd ms':>12}{'vs concat':>11}"
    if enc_time is not None:
        header += f"{'share of step':>15}"
    print(header)
    for name, t, n_params in rows:
        line = f"{name:<16}{n_params / 1e6:>9.2f}M{t * 1000:>12.1f}{t / base:>10.2f}x"
        if enc_time is not None:
            line += f"{100 * t / (t + enc_time):>14.1f}%"
        print(line)


if __name__ == "__main__":
    main()
