"""The one training loop: generic over modalities, fusion strategies, heads and devices.

Device auto (CUDA with bf16 autocast, else CPU), AdamW with a cosine schedule and linear
warm-up, gradient clipping, early stopping on a validation metric, seeded. New objectives
are heads or tasks, never copies of this loop.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from fusion.data import Batch


class TrainConfig(BaseModel):
    """Training settings (``train.*`` in a recipe; override with ``--set train.lr=3e-4``)."""

    model_config = ConfigDict(extra="forbid")

    max_epochs: int = Field(20, ge=1, description="upper bound on epochs")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="share of steps warming up")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = off")
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    monitor: str = Field("auroc", description="validation metric for early stopping")
    monitor_mode: Literal["max", "min"] = "max"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    class_weighting: bool = Field(True, description="weight the loss by inverse prevalence")
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    threshold_rule: str = Field("youden", description="how the decision threshold is chosen")
    n_boot: int = Field(500, ge=0, description="bootstrap resamples for test CIs")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Logits -> probabilities: sigmoid (binary: (B,), multilabel: (B, L)), softmax (multiclass)."""
    logits = logits.float()
    if task == "multiclass":
        return logits.softmax(-1)
    p = logits.sigmoid()
    return p.reshape(-1) if task == "binary" else p


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA; a no-op context on CPU (CPU bf16 is slower on most parts)."""
    enabled = bf16 and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class Predictions:
    """Model outputs over a loader, in loader order."""

    patients: list[str]
    probs: np.ndarray
    labels: np.ndarray | None
    present: dict[str, np.ndarray]


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_value: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DataLoader, task: str, device: torch.device, bf16: bool = True
) -> Predictions:
    """Run the model over ``loader`` (eval mode, inference mode, bf16 on CUDA)."""
    model.eval()
    patients: list[str] = []
    probs, labels = [], []
    present: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, bf16):
            out = model(batch.inputs, batch.present)
        probs.append(probabilities(task, out["logits"]).cpu().numpy())
        if batch.labels is not None:
            labels.append(batch.labels.cpu().numpy())
        patients += batch.patients
        for m, p in batch.present.items():
            present.setdefault(m, []).append(p.cpu().numpy())
    return Predictions(
        patients,
        np.concatenate(probs) if probs else np.zeros((0,)),
        np.concatenate(labels) if labels and len(labels) == len(probs) else None,
        {m: np.concatenate(v) for m, v in present.items()},
    )


def _schedule(total_steps: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: TrainConfig,
    task: str,
    validate: Callable[[Predictions], dict[str, float]],
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train with early stopping on ``validate(...)[cfg.monitor]``; return the best weights.

    ``on_epoch(epoch, metrics)`` receives ``train_loss``, ``lr``, ``epoch_seconds`` and
    ``val_<metric>`` for every epoch (the tracker logs them in one batch).
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.max_epochs * max(1, len(train_loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _schedule(total, int(cfg.warmup_fraction * total))
    )
    sign = 1.0 if cfg.monitor_mode == "max" else -1.0
    best = FitResult(copy.deepcopy(model.state_dict()), -1, -math.inf * sign)
    stale = 0
    for epoch in range(cfg.max_epochs):
        t0 = time.perf_counter()
        model.train()
        losses = []
        for batch in train_loader:
            batch: Batch = batch.to(device)
            with autocast(device, cfg.bf16):
                out = model(batch.inputs, batch.present, batch.labels)
            loss = out["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.detach())
        metrics = {
            "train_loss": float(torch.stack(losses).mean()) if losses else math.nan,
            "lr": float(sched.get_last_lr()[0]),
        }
        val = validate(predict(model, val_loader, task, device, cfg.bf16))
        metrics |= {f"val_{k}": v for k, v in val.items()}
        metrics["epoch_seconds"] = time.perf_counter() - t0
        best.history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        value = val.get(cfg.monitor, math.nan)
        if not math.isnan(value) and sign * value > sign * best.best_value:
            best.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in model.state_dict().items()}
            best.best_epoch, best.best_value, stale = epoch, value, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                best.stopped_early = True
                break
    if best.best_epoch < 0:  # metric undefined every epoch (e.g. one-class val): keep last
        best.best_state = {k: v.detach().to("cpu", copy=True)
                           for k, v in model.state_dict().items()}
        best.best_epoch = len(best.history) - 1
    model.load_state_dict(best.best_state)
    best.seconds = time.perf_counter() - t_start
    return best


def make_loader(
    dataset: Any, collate: Callable[..., Batch], cfg: TrainConfig, shuffle: bool,
    device: torch.device | None = None,
) -> DataLoader:
    """DataLoader with the project's defaults (seeded shuffling, pinned memory on CUDA)."""
    g = torch.Generator().manual_seed(cfg.seed)
    cuda = (device or resolve_device(cfg.device)).type == "cuda"
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=cuda,
        generator=g,
        drop_last=False,
    )


def state_summary(state: dict[str, Any]) -> dict[str, Any]:
    """Parameter count of a state dict (for logs and model cards)."""
    return {"parameters": int(sum(v.numel() for v in state.values() if torch.is_tensor(v)))}
