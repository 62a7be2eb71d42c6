"""The torchrun entry point: train one variant into a run folder (DDP across processes).

::

    torchrun --standalone --nproc_per_node N -m workflows.train_worker \\
        --prepared PREPARED --config CONFIG --fusion concat --out RUN_FOLDER \\
        [--modalities ct,note] [--set key=value ...] [--backend nccl|gloo]

A thin shell: it joins the process group (``fusion.distributed.init_distributed``), reads
the config through ``workflows.config.load_config`` (a recipe name or YAML path, with
``--set`` overrides: the same loader as ``clinfuse train``), and calls
``fusion.run_folder.train_to_folder``, the function the in-process path calls too. It never
touches MLflow or Prefect; ``registry.experiment.log_run_folder`` logs the folder afterwards.
Without torchrun (``python -m workflows.train_worker ...``) it trains in one process. User
errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workflows.train_worker",
        description="Train one fusion variant into a run folder (launch with torchrun for DDP).",
    )
    p.add_argument("--prepared", required=True, type=Path, help="prepared cohort folder")
    p.add_argument("--config", required=True,
                   help="recipe name or YAML path (clinfuse train writes the resolved one)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--fusion", required=True, help="fusion strategy name, e.g. concat")
    p.add_argument("--modalities", default=None,
                   help="comma-separated subset (default: every cohort modality; one name "
                        "trains a unimodal baseline)")
    p.add_argument("--out", required=True, type=Path, help="run folder (rank 0 writes)")
    p.add_argument("--backend", default=None, choices=["nccl", "gloo"],
                   help="default: nccl with CUDA, else gloo")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train; user errors (``ClinfuseError``) print one line and exit 2 (no traceback)."""
    from fusion.distributed import cleanup, init_distributed
    from fusion.run_folder import train_to_folder
    from modalities.errors import ClinfuseError
    from workflows.config import load_config

    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        env = init_distributed(args.backend)
        try:
            mods = [m for m in (args.modalities or "").split(",") if m] or None
            train_to_folder(args.prepared, cfg.cohort, cfg.model, cfg.train, args.fusion, mods,
                            args.out, local_rank=env.local_rank, echo=True)
        finally:
            cleanup()
    except ClinfuseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
