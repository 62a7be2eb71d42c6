"""Shared test set-up: offline, quiet, isolated Prefect home, a demo pseudonym key."""

from __future__ import annotations

import os

os.environ.setdefault("CLINFUSE_PSEUDONYM_KEY", "test-key-0123456789abcdef")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")

import tempfile  # noqa: E402

if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="clinfuse-prefect-")

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads cost more than they give on 2 cores
