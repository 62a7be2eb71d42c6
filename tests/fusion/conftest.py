"""Fusion tests use tiny models: one intra-op torch thread (tests/torch_threads.py)."""

from tests.torch_threads import one_thread  # noqa: F401 (autouse fixture)
