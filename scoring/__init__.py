"""Batch scoring, drift and prediction stores (Parquet, PostgreSQL).

Layering: scoring imports fusion and modalities, never registry or workflows; fusion never
imports scoring (the drift reference training stores lives in ``fusion.reference``).

- ``scoring.loop``: ``score_cohort`` / ``score_into``, ``ScoreSummary``;
- ``scoring.plan``: who is scored or skipped and why, input hashes;
- ``scoring.drift``: score distribution, PSI and drift against a reference;
- ``scoring.retrieval``: retrieval (embedding) models: embedding columns, the search
  export and the top-k neighbours of the scored cohort;
- ``scoring.stores``: the ``PredictionStore`` protocol, Parquet and PostgreSQL stores.
"""

from __future__ import annotations

from scoring.errors import ScoringError
from scoring.loop import ScoreSummary, score_cohort, score_into

__all__ = ["ScoreSummary", "ScoringError", "score_cohort", "score_into"]
