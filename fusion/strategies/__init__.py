"""Fusion strategies, one per file. Importing this package registers all of them; the list
below is checked by a test so an import that silently fails to register one is caught."""

from fusion.strategies import (  # noqa: F401  (registration)
    bottleneck,
    concat,
    cross_attention,
    early,
    gated,
    late,
)

EXPECTED_FUSIONS = ["bottleneck", "concat", "cross_attention", "early", "gated", "late"]
