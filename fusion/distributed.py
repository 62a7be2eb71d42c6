"""Multi-process training with torchrun + DistributedDataParallel, reusing the one loop.

``fusion.train.fit``/``make_loader`` become DDP-aware when a process group is initialised:
training loaders are sharded by ``ShardSampler``, the model is wrapped once by ``wrap_ddp``,
rank 0 alone validates and decides early stopping, and its decision is broadcast so every
rank stops together. This module holds only those primitives (environment, init, barrier,
gather/broadcast, sampler, wrap); the torchrun entry point is ``workflows.train_worker``,
which trains through ``fusion.run_folder.train_to_folder``. See docs/distributed.md.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, RandomSampler

from modalities.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (read from the variables torchrun sets).

    Outside torchrun (no ``WORLD_SIZE``) it describes a single process: rank 0 of 1.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    launched: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistEnv:
        """Parse ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``."""
        env = os.environ if env is None else env

        def num(key: str, default: int) -> int:
            raw = env.get(key)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(
                    f"environment variable {key}={raw!r} is not an integer; launch with "
                    "torchrun, which sets it"
                ) from None
            if value < 0:
                raise ConfigError(f"environment variable {key} must be >= 0, got {value}")
            return value

        launched = "WORLD_SIZE" in env
        world = num("WORLD_SIZE", 1)
        rank = num("RANK", 0)
        if world < 1 or rank >= world:
            raise ConfigError(
                f"RANK {rank} / WORLD_SIZE {world} is not a valid rank assignment; launch "
                "with torchrun instead of setting them by hand"
            )
        port = env.get("MASTER_PORT")
        return cls(
            rank=rank,
            world_size=world,
            local_rank=num("LOCAL_RANK", 0),
            master_addr=env.get("MASTER_ADDR") or None,
            master_port=num("MASTER_PORT", 0) if port else None,
            launched=launched,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed() -> bool:
    """True inside an initialised process group (what switches the loop to DDP)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that validates, logs and writes outputs."""
    return rank() == 0


def init_distributed(backend: str | None = None) -> DistEnv:
    """Join the torchrun job described by the environment; a no-op outside torchrun.

    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``. On CUDA the
    process's device is set from ``LOCAL_RANK`` first, so ``cuda`` means "my GPU" to every
    later call (``resolve_device``, ``.to("cuda")``, NCCL collectives).
    """
    env = DistEnv.from_env()
    if distributed() or not env.launched:
        return env
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if backend == "nccl":
        if not cuda:
            raise ConfigError("backend 'nccl' needs CUDA GPUs; use --backend gloo on CPU")
        if env.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPU(s) are "
                "visible; use --nproc_per_node <= the number of GPUs"
            )
    if cuda and env.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend)  # env:// rendezvous from torchrun's variables
    return env


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if not distributed():
        return
    if dist.get_backend() == "nccl":  # names the device, avoiding NCCL's guess-the-GPU warning
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if distributed():
        dist.destroy_process_group()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process). Must be picklable."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (returned unchanged in a single process)."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: Sequence[torch.Tensor]) -> float:
    """Mean of ``values`` pooled over every rank (NaN when no rank has any)."""
    if not distributed():
        return float(torch.stack(list(values)).mean()) if values else math.nan
    total = float(torch.stack(list(values)).double().sum()) if values else 0.0
    pair = torch.tensor([total, float(len(values))], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
        pair = pair.cuda()
    dist.all_reduce(pair)
    return float(pair[0] / pair[1]) if pair[1] > 0 else math.nan


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """Wrap ``model`` (already on ``device``) for data-parallel training.

    ``find_unused_parameters=True`` is required, not a precaution: an encoder whose modality
    is absent from every row of a rank's batch (missing data, modality dropout, one-modality
    batches) is skipped in ``FusionModel.encode``, so its parameters get no gradient in that
    step; without it DDP raises "Expected to have finished reduction in the prior
    iteration" at the next forward (tests/fusion/test_distributed.py shows both sides). It
    costs one extra graph traversal per step.
    """
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=True
    )


class ShardSampler(DistributedSampler):
    """Seeded shuffling, sharded over ranks: each rank gets every ``world``-th index.

    The permutation of an epoch is the one a plain ``DataLoader(shuffle=True,
    generator=g)`` would use (it is drawn by a ``RandomSampler`` from the same generator,
    which the loader shares), so with one rank DDP training reproduces ``fit`` exactly; every
    rank seeds its generator alike and draws in the same order, so the shards are disjoint.
    Like ``DistributedSampler`` it pads by repeating the first indices so that every rank
    runs the same number of steps (DDP would hang otherwise). Call ``set_epoch`` each epoch;
    iterating twice in one epoch yields the same order. ``shuffle=False`` shards in order.
    """

    def __init__(
        self, dataset: Dataset, generator: torch.Generator, num_replicas: int, rank: int,
        shuffle: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         drop_last=False)
        self.generator = generator
        self._perm: tuple[int, list[int]] | None = None  # (epoch, permutation)

    def __iter__(self) -> Iterator[int]:
        if self._perm is None or self._perm[0] != self.epoch:
            n = len(self.dataset)  # type: ignore[arg-type]
            order = (list(RandomSampler(range(n), generator=self.generator)) if self.shuffle
                     else list(range(n)))
            self._perm = (self.epoch, order)
        indices = list(self._perm[1])
        pad = self.total_size - len(indices)
        if pad > 0 and indices:
            indices += (indices * math.ceil(pad / len(indices)))[:pad]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s own random stream (dropout, modality dropout)."""
    digest = hashlib.blake2b(f"{seed}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
