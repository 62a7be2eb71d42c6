"""A label parser for ingest tests: 0/1 cells per label column, built from the raw-value
rules of ``modalities.cohort`` (the binary task's rule). The real parsers are the tasks in
``fusion.tasks``; tests of this package stay below ``fusion`` and so do not import them."""

from __future__ import annotations

from collections.abc import Mapping

from modalities.cohort import CohortConfig, flag_value, label_cells


class FlagLabels:
    """``LabelParser``: every label cell 0/1 (true/false, yes/no); all empty = unlabeled."""

    def parse_labels(self, row: Mapping[str, str], cfg: CohortConfig) -> list[float] | None:
        cells = label_cells(row, cfg)
        return None if cells is None else [flag_value(v, c) for c, v in cells.items()]


FLAGS = FlagLabels()
