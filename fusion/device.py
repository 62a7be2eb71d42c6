"""Device choice, bf16 autocast and host-to-device transfers, shared by training and scoring.

One place for the rules: ``auto`` means CUDA when available; bf16 autocast runs on CUDA only
(CPU bf16 is slower on most parts); on CUDA, loaders pin host memory and copies are
non-blocking so they overlap compute.
"""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast on CUDA; a no-op context on CPU (CPU bf16 is slower on most parts)."""
    enabled = bf16 and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def pin_memory(device: torch.device) -> bool:
    """Whether a DataLoader feeding ``device`` should pin host memory (CUDA only)."""
    return device.type == "cuda"


def move(value: Any, device: torch.device) -> Any:
    """A tensor moved to ``device`` (non-blocking on CUDA); anything else unchanged."""
    if not torch.is_tensor(value):
        return value
    return value.to(device, non_blocking=device.type == "cuda")


def pin(value: Any) -> Any:
    """A tensor in pinned host memory; anything else unchanged."""
    return value.pin_memory() if torch.is_tensor(value) else value
