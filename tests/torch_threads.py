"""One intra-op torch thread for tests of tiny models: faster than two for them, and far
faster when the cores are shared (two OpenMP threads spin-wait against other processes).
Test packages that want it import the fixture into their conftest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Set one intra-op thread for the test, restore the previous count after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
