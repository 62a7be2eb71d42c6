"""Prefect log filters installed by the CLI (workflows.runtime.quiet_user_errors)."""

from __future__ import annotations

import logging

from workflows.runtime import quiet_user_errors


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_thread_timeout_notice_is_dropped_and_other_warnings_kept() -> None:
    quiet_user_errors(console=False)
    logger = logging.getLogger("prefect.task_runs")
    keep = _Keep()
    logger.addHandler(keep)
    try:
        logger.warning("Task run 'ingest-chunk-1' - Timeout of 900.0 seconds configured for "
                       "this task, but the task is running in a worker thread. Timeouts in "
                       "worker threads cannot interrupt blocking operations like time.sleep().")
        logger.warning("Task run 'ingest-chunk-1' - something else went wrong")
    finally:
        logger.removeHandler(keep)
    assert keep.messages == ["Task run 'ingest-chunk-1' - something else went wrong"]
