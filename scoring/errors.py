"""The scoring package's own error: an output could not be written or read."""

from __future__ import annotations

from modalities.errors import ClinfuseError


class ScoringError(ClinfuseError):
    """Scoring could not write its output (database or files); names the target, no rows."""
