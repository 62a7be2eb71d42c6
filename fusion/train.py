"""The one training loop: generic over modalities, fusion strategies, heads and devices.

Device auto (CUDA with bf16 autocast, else CPU), AdamW with a cosine schedule and linear
warm-up, gradient clipping, early stopping on a validation metric, seeded. New objectives
are heads or tasks, never copies of this loop.

Under torchrun (an initialised process group, see ``fusion.distributed``) the same loop runs
data-parallel: training loaders are sharded, the model is wrapped in DDP once, rank 0 alone
validates and decides early stopping, and the decision is broadcast. Without a process
group nothing changes.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from fusion.data import Batch
from fusion.device import autocast, pin_memory, resolve_device
from fusion.distributed import (
    ShardSampler,
    all_reduce_mean,
    broadcast_object,
    distributed,
    is_main,
    rank,
    rank_seed,
    world_size,
    wrap_ddp,
)
from fusion.tasks import Task, get_task


class TrainConfig(BaseModel):
    """Training settings (``train.*`` in a recipe; override with ``--set train.lr=3e-4``)."""

    model_config = ConfigDict(extra="forbid")

    max_epochs: int = Field(20, ge=1, description="upper bound on epochs")
    batch_size: int = Field(16, ge=1, description="per process under DDP (global = x ranks)")
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="share of steps warming up")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = off")
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_epochs: int = Field(
        0, ge=0, description="epochs that always run before early stopping may end training"
    )
    smoothing: float = Field(
        0.0, ge=0, lt=1,
        description="weight of the past in an exponential moving average of the monitored "
        "metric (0 = raw); a small validation split gives noisy per-epoch values",
    )
    lr_scale: dict[str, float] = Field(
        default_factory=dict,
        description="learning-rate multipliers by model part prefix, e.g. {encoders.note: 0.1}",
    )
    pretrained_lr_scale: float = Field(
        0.1, gt=0, description="learning-rate multiplier of fine-tuned pretrained weights"
    )
    ema_decay: float = Field(
        0.0, ge=0, lt=1,
        description="per-step decay of an exponential moving average of the weights that "
        "is validated, kept and returned (0 = off); steadies small-batch training",
    )
    monitor: str | None = Field(
        None, description="validation metric for early stopping (default: the task's, e.g. "
        "auroc for binary, auroc_macro for multiclass/multilabel, recall@1 for retrieval)",
    )
    monitor_mode: Literal["max", "min"] = Field(
        "max", description="direction of a chosen monitor (the task's metric has its own)"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    threads: int | None = Field(
        None, ge=1, description="intra-op CPU threads while training (None: torch's default, "
        "one per core); small models train up to 10x faster with 1 on a busy 2-core machine",
    )
    class_weighting: bool = Field(True, description="weight the loss by inverse prevalence")
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    threshold_rule: str = Field("youden", description="how the decision threshold is chosen")
    n_boot: int = Field(500, ge=0, description="bootstrap resamples for test CIs")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def probabilities(task: str | Task, logits: torch.Tensor) -> torch.Tensor:
    """Logits -> probabilities by the task's rule (``Task.probabilities``)."""
    return get_task(task).probabilities(logits)


def monitored(cfg: TrainConfig, task: str | Task) -> str:
    """The validation metric early stopping watches: ``train.monitor`` or the task's."""
    return cfg.monitor or get_task(task).monitor


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
    world_size: int = 1
    train_samples: list[int] = field(default_factory=list)  # this process, per epoch
    train_patients: list[str] = field(default_factory=list)  # this process, last epoch


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DataLoader, task: str | Task, device: torch.device,
    bf16: bool = True,
) -> Predictions:
    """Run the model over ``loader`` (eval mode, inference mode, bf16 on CUDA); ``probs``
    holds what the task keeps per row (``Task.outputs``: probabilities, or embeddings)."""
    task = get_task(task)
    model.eval()
    patients: list[str] = []
    probs, labels = [], []
    present: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, bf16):
            out = model(batch.inputs, batch.present)
        probs.append(task.outputs(out).cpu().numpy())
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


def param_groups_by_part(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by model part: ``encoders.<modality>``, then each other top-level
    child (``projections``, ``fusion``, ``head``). Used for per-part gradient norms."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "encoders" and len(parts) > 2 else parts[0]
        groups.setdefault(key, []).append(p)
    return groups


PRETRAINED_FLAG = "clinfuse_pretrained"


def optimizer_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: base ``lr``, ``lr * pretrained_lr_scale`` for trainable
    weights of modules flagged pretrained (attribute ``clinfuse_pretrained``: fine-tuned
    text transformers, loaded volume backbones), then ``lr_scale`` by part-name prefix.

    Why: pretrained weights fine-tuned at the rate that from-scratch layers need are
    overwritten in a few steps; the from-scratch parts need the full rate to learn at all.
    """
    pretrained = {
        id(p)
        for mod in model.modules()
        if getattr(mod, PRETRAINED_FLAG, False)
        for p in mod.parameters()
    }
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = cfg.pretrained_lr_scale if id(p) in pretrained else 1.0
        for prefix, factor in cfg.lr_scale.items():
            if name == prefix or name.startswith(prefix + "."):
                scale = factor
        groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": cfg.lr * k, "lr_scale": k} for k, ps in sorted(groups.items())]


def _grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Global L2 norm of each group's gradients (before clipping), as 0-d tensors."""
    out = {}
    for key, ps in groups.items():
        grads = [p.grad.detach().float().norm() for p in ps if p.grad is not None]
        if grads:
            out[key] = torch.stack(grads).norm()
    return out


class WeightAverage:
    """Exponential moving average of a model's trainable weights and float buffers.

    Only what training changes is averaged (a frozen 22M-parameter text encoder is not:
    averaging it every step would cost more than the step). ``applied()`` swaps the average
    into the model for validation and for keeping the best weights, then swaps back.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        named = dict(model.named_parameters())
        self.live = {n: p for n, p in named.items() if p.requires_grad}
        self.live |= {n: b for n, b in model.named_buffers() if b.is_floating_point()}
        self.avg = {n: t.detach().clone() for n, t in self.live.items()}

    @torch.no_grad()
    def update(self) -> None:
        names = list(self.live)
        torch._foreach_lerp_([self.avg[n] for n in names],
                             [self.live[n].detach() for n in names], 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        saved = {n: t.detach().clone() for n, t in self.live.items()}
        with torch.no_grad():
            for n, t in self.live.items():
                t.copy_(self.avg[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, t in self.live.items():
                    t.copy_(saved[n])


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
    task: str | Task,
    validate: Callable[[Predictions], dict[str, float]],
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train with early stopping on ``validate(...)[monitored(cfg, task)]``; return the best
    weights.

    ``on_epoch(epoch, metrics)`` receives ``train_loss``, ``lr``, ``epoch_seconds`` and
    ``val_<metric>`` for every epoch (the tracker logs them in one batch).

    Under DDP (``fusion.distributed``): ``model`` is wrapped once here and stays the plain
    module for validation, state dicts and the caller; ``train_loss`` is the mean over all
    ranks; only rank 0 runs ``validate`` and ``on_epoch`` and decides whether the epoch
    improved or training stops, and broadcasts that (with the metrics), so every rank keeps
    the same best weights and stops at the same epoch.
    """
    t_start = time.perf_counter()
    if cfg.threads:  # process-wide: the training process (or worker) is this loop's
        torch.set_num_threads(cfg.threads)
    task = get_task(task)
    monitor = monitored(cfg, task)
    device = resolve_device(cfg.device)
    model.to(device)
    ddp = distributed()
    net = wrap_ddp(model, device) if ddp else model
    main = is_main()
    if rank() > 0:
        # Rank 0 keeps the single-process random stream (so one rank reproduces plain fit);
        # the others get their own, so dropout and modality-dropout masks differ per rank.
        torch.manual_seed(rank_seed(cfg.seed, rank()))
    params = [p for p in model.parameters() if p.requires_grad]
    parts = param_groups_by_part(model)
    opt = torch.optim.AdamW(optimizer_groups(model, cfg), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    total = cfg.max_epochs * max(1, len(train_loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _schedule(total, int(cfg.warmup_fraction * total))
    )
    # Validation, the kept weights and the result use an EMA of the weights when asked:
    # after a model starts to learn, single-epoch weights swing (validation AUROC 0.85 ->
    # 0.47 -> 0.86 on 48 patients), their average does not (docs/training.md).
    averaged = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    # The task's metric comes with its direction; a chosen ``monitor`` with ``monitor_mode``.
    mode = cfg.monitor_mode if cfg.monitor else task.monitor_mode
    sign = 1.0 if mode == "max" else -1.0
    best = FitResult(copy.deepcopy(model.state_dict()), -1, -math.inf * sign,
                     world_size=world_size())
    stale = 0
    smoothed = math.nan
    for epoch in range(cfg.max_epochs):
        t0 = time.perf_counter()
        sampler = getattr(train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        net.train()
        losses = []
        norms: dict[str, list[torch.Tensor]] = {}
        seen: list[str] = []
        for batch in train_loader:
            batch: Batch = batch.to(device)
            with autocast(device, cfg.bf16):
                out = net(batch.inputs, batch.present, batch.labels)
            loss = out["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for key, n in _grad_norms(parts).items():
                norms.setdefault(key, []).append(n)
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            if averaged is not None:
                averaged.update()
            losses.append(loss.detach())
            seen += batch.patients
        best.train_samples.append(len(seen))
        best.train_patients = seen
        train_loss = all_reduce_mean(losses)  # a collective: every rank calls it
        decision = None
        if main:
            metrics = {"train_loss": train_loss, "lr": float(sched.get_last_lr()[0])}
            # Mean per-step gradient norm of each model part: a part whose gradient is tiny
            # next to the others is not learning (see docs/training.md, "Diagnostics").
            metrics |= {f"grad_norm/{k}": float(torch.stack(v).mean()) for k, v in norms.items()}
            with averaged.applied() if averaged is not None else nullcontext():
                val = validate(predict(model, val_loader, task, device, cfg.bf16))
            metrics |= {f"val_{k}": v for k, v in val.items()}
            metrics["epoch_seconds"] = time.perf_counter() - t0
            raw = val.get(monitor, math.nan)
            if not math.isnan(raw):  # an undefined epoch leaves the average where it was
                smoothed = raw if math.isnan(smoothed) else (
                    cfg.smoothing * smoothed + (1 - cfg.smoothing) * raw)
                value = smoothed
            else:
                value = math.nan
            if cfg.smoothing > 0:
                metrics[f"val_{monitor}_smoothed"] = value
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            improved = not math.isnan(value) and sign * value > sign * best.best_value
            stale = 0 if improved else stale + 1
            stop = not improved and stale >= cfg.patience and epoch + 1 >= cfg.min_epochs
            decision = (metrics, value, improved, stop)
        if ddp:
            decision = broadcast_object(decision)
        metrics, value, improved, stop = decision
        best.history.append(metrics)
        if improved:
            with averaged.applied() if averaged is not None else nullcontext():
                best.best_state = {k: v.detach().to("cpu", copy=True)
                                   for k, v in model.state_dict().items()}
            best.best_epoch, best.best_value = epoch, value
        elif stop:
            best.stopped_early = True
            break
    if best.best_epoch < 0:  # metric undefined every epoch (e.g. one-class val): keep last
        with averaged.applied() if averaged is not None else nullcontext():
            best.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in model.state_dict().items()}
        best.best_epoch = len(best.history) - 1
    model.load_state_dict(best.best_state)
    best.seconds = time.perf_counter() - t_start
    return best


def make_loader(
    dataset: Any, collate: Callable[..., Batch], cfg: TrainConfig, shuffle: bool,
    device: torch.device | None = None, shard: bool | None = None,
) -> DataLoader:
    """DataLoader with the project's defaults (seeded shuffling, pinned memory on CUDA).

    ``shard`` (default: ``shuffle`` inside a process group) gives each rank its own slice
    of every epoch's permutation (``ShardSampler``; ``fit`` calls ``set_epoch``). Training
    loaders shuffle and so are sharded; evaluation loaders do not shuffle and stay whole, so
    validation and test metrics are exact over the full split on whichever rank runs them.
    ``cfg.batch_size`` is per process.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    pinned = pin_memory(device or resolve_device(cfg.device))
    if shard is None:
        shard = shuffle and distributed()
    sampler = None
    if shard:
        # Shares the loader's generator, drawing what a plain shuffled loader would draw.
        sampler = ShardSampler(dataset, g, num_replicas=world_size(), rank=rank(),
                               shuffle=shuffle)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=pinned,
        generator=g,
        drop_last=False,
    )


def state_summary(state: dict[str, Any]) -> dict[str, Any]:
    """Parameter count of a state dict (for logs and model cards)."""
    return {"parameters": int(sum(v.numel() for v in state.values() if torch.is_tensor(v)))}
