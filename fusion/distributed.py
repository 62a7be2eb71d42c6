"""Multi-process training with torchrun + DistributedDataParallel, reusing the one loop.

``fusion.train.fit``/``make_loader`` become DDP-aware when a process group is initialised:
training loaders are sharded by ``ShardSampler``, the model is wrapped once by ``wrap_ddp``,
rank 0 alone validates and decides early stopping, and its decision is broadcast so every
rank stops together. This module holds the process-group helpers and an entry point::

    torchrun --standalone --nproc_per_node 2 -m fusion.distributed \\
        --prepared PREPARED --config resolved.yaml --fusion concat --out OUT

The entry point reads a *resolved* config (``cohort``/``model``/``train`` sections, no
``base``): recipe lookup and ``--set`` overrides live in ``workflows.config``, which the
fusion package must not import, so the caller (``clinfuse train --ddp``) resolves the recipe
and hands over one file. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, RandomSampler

from modalities.errors import ClinfuseError, ConfigError

# Written to --out by the entry point (rank 0, except the per-rank files).
WEIGHTS_FILE = "weights.safetensors"
PREDICTOR_CONFIG_FILE = "predictor_config.json"
TEST_METRICS_FILE = "test_metrics.json"
FIT_FILE = "fit.json"
EPOCHS_FILE = "epochs.jsonl"
TEST_PREDICTIONS_FILE = "test_predictions.parquet"
RANKS_DIR = "ranks"


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


# --------------------------------------------------------------------------- entry point
def read_resolved_config(path: Path) -> tuple[Any, Any, Any]:
    """``(CohortConfig, ModelConfig, TrainConfig)`` from a resolved YAML/JSON config file.

    Missing ``model``/``train`` sections take their defaults; other top-level keys (``name``,
    ``ingest``, ``score``) are ignored. A ``base`` key means the recipe is not resolved.
    """
    import yaml
    from pydantic import ValidationError

    from fusion.config import ModelConfig
    from fusion.train import TrainConfig
    from modalities.cohort import CohortConfig

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a resolved YAML config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    if "base" in data:
        raise ConfigError(
            f"config {path} names a base recipe; pass a resolved config (all sections "
            "spelled out): `clinfuse train --ddp N` writes one, or dump "
            "workflows.config.load_config(NAME, overrides).model_dump(mode='json') to YAML"
        )
    if "cohort" not in data:
        raise ConfigError(f"config {path} has no 'cohort' section")
    sections = {"cohort": CohortConfig, "model": ModelConfig, "train": TrainConfig}
    out = []
    for key, cls in sections.items():
        try:
            out.append(cls.model_validate(data.get(key) or {}))
        except ValidationError as err:
            lines = [f"  {key}.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                     for e in err.errors()]
            raise ConfigError(f"config {path} is invalid:\n" + "\n".join(lines)) from None
    return out[0], out[1], out[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fusion.distributed",
        description="Train one fusion variant with DDP (launch with torchrun).",
    )
    p.add_argument("--prepared", required=True, type=Path, help="prepared cohort folder")
    p.add_argument("--config", required=True, type=Path,
                   help="resolved config YAML (cohort/model/train sections, no 'base')")
    p.add_argument("--fusion", required=True, help="fusion strategy name, e.g. concat")
    p.add_argument("--modalities", default=None,
                   help="comma-separated subset (default: every cohort modality; one name "
                        "trains a unimodal baseline)")
    p.add_argument("--out", required=True, type=Path, help="output folder (rank 0 writes)")
    p.add_argument("--backend", default=None, choices=["nccl", "gloo"],
                   help="default: nccl with CUDA, else gloo")
    return p


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None so the files are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe(payload), indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)  # readers never see half a file


def save_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors (cloned: safetensors refuses shared storage)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(path),
              metadata={"format": "clinfuse"})


def _predictions_frame(result: Any, task: str) -> Any:
    """The test predictions table: the same columns as an in-process run's (the task's)."""
    from fusion.tasks import get_task

    test = result.test
    return get_task(task).prediction_table(test.patients, test.probs, test.labels,
                                           result.threshold, test.present)


def run(args: argparse.Namespace, env: DistEnv) -> dict[str, Any]:
    """Split the cohort, train one variant (DDP when launched by torchrun), write outputs."""
    from fusion.data import PreparedCohort
    from fusion.experiment import plan_variants, split_cohort, train_variant

    cohort_cfg, model_cfg, train_cfg = read_resolved_config(args.config)
    cohort = PreparedCohort(args.prepared, cohort_cfg)
    rows = split_cohort(cohort, train_cfg)
    mods = [m for m in (args.modalities or "").split(",") if m] or sorted(cohort.mods)
    unknown = sorted(set(mods) - set(cohort.mods))
    if unknown:
        raise ConfigError(f"--modalities names {', '.join(unknown)}, not in the cohort; valid "
                          f"names: {', '.join(sorted(cohort.mods))}")
    variant = plan_variants(mods, [args.fusion], baselines=False,
                            unimodal_fusion=args.fusion)[0]
    out: Path = args.out
    (out / RANKS_DIR).mkdir(parents=True, exist_ok=True)
    epochs = out / EPOCHS_FILE
    if is_main():  # other ranks write their files only after training has synchronised
        epochs.unlink(missing_ok=True)
        for stale in (out / RANKS_DIR).glob("rank*.json"):
            stale.unlink()

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:  # rank 0 only (fit's rule)
        with epochs.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_json_safe({"epoch": epoch, **metrics})) + "\n")
        shown = {k: round(v, 4) for k, v in metrics.items() if k != "lr"}
        print(f"epoch {epoch}: {shown}", file=sys.stderr, flush=True)

    result = train_variant(cohort, rows, variant, model_cfg, train_cfg, on_epoch)
    fit_res = result.fit
    # Every rank reports what it trained on (pseudonyms only): shows the shards are disjoint.
    _write_json(out / RANKS_DIR / f"rank{rank()}.json", {
        "rank": rank(), "world_size": world_size(), "local_rank": env.local_rank,
        "train_samples_per_epoch": fit_res.train_samples,
        "train_patients_last_epoch": sorted(fit_res.train_patients),
    })
    summary = {
        "variant": variant.name, "fusion": variant.fusion,
        "modalities": list(variant.modalities), "world_size": world_size(),
        "backend": dist.get_backend() if distributed() else None,
        "per_process_batch_size": train_cfg.batch_size,
        "best_epoch": fit_res.best_epoch, "best_value": fit_res.best_value,
        "monitor": train_cfg.monitor or cohort.task_rules.monitor,
        "stopped_early": fit_res.stopped_early,
        "seconds": fit_res.seconds, "epochs": len(fit_res.history),
        "history": fit_res.history, "threshold": result.threshold,
        "splits": rows["split"].value_counts().to_dict(),
    }
    if is_main():
        save_state(result.model.state_dict(), out / WEIGHTS_FILE)
        _write_json(out / PREDICTOR_CONFIG_FILE, result.predictor_config)
        _write_json(out / TEST_METRICS_FILE, result.test_metrics)
        _write_json(out / FIT_FILE, summary)
        _predictions_frame(result, cohort.task).to_parquet(out / TEST_PREDICTIONS_FILE,
                                                           index=False)
    barrier()  # no rank exits (tearing the job down) before rank 0 has written
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; user errors print one line and exit 2 (no traceback)."""
    args = _parser().parse_args(argv)
    try:
        env = init_distributed(args.backend)
        try:
            run(args, env)
        finally:
            cleanup()
    except ClinfuseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
