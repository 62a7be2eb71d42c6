"""The ``PredictionStore`` protocol: what the scoring loop needs of a place for predictions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import pyarrow as pa

KEY_COLUMNS = ("patient", "model_version", "input_hash")


@runtime_checkable
class PredictionStore(Protocol):
    """What the scoring loop needs of a place that keeps predictions."""

    location: str  # where the rows are, for the summary (a path or a table name)

    def done_keys(self, model_version: str) -> set[tuple[str, str]]:
        """(patient, input_hash) of every stored row of ``model_version``."""
        ...

    def write(self, table: pa.Table) -> int:
        """Store one scored batch all-or-nothing (a re-write of stored keys replaces them);
        returns the row count. Raises ``ScoringError`` naming the target, never rows."""
        ...

    def finish(self) -> None:
        """Make everything written visible in its final form (e.g. consolidate)."""
        ...

    def rows(self, model_version: str, columns: list[str]) -> Iterator[pa.Table]:
        """Stream ``columns`` of the stored rows of ``model_version`` (after ``finish``)."""
        ...

    def counts(self) -> dict[str, int]:
        """This run's write counters, named as ``ScoreSummary`` fields."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...
