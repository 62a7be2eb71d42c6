"""Process-wide defaults set before Prefect, MLflow or transformers are imported.

Offline and quiet by default: no telemetry, no hub downloads, a generous ephemeral-server
start-up timeout (FACTS.md), and MONAI's codec warnings filtered once.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import ClassVar

_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
}


def configure_runtime() -> None:
    """Apply the defaults without overriding anything the user set."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    for noisy in ("monai", "mlflow", "alembic", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*shadows an attribute in parent.*")


class _OneLineUserErrors(logging.Filter):
    """On Prefect's run loggers: a ``ClinfuseError`` (or an exception marked ``one_line``,
    such as the train flow's ``VariantsFailed``) is logged as one line, no traceback.

    A user error (bad config, unknown name, empty split) is not a bug; its message says what
    to do, and the traceback only buries it. The message is remembered so the console
    filter below can keep it off the terminal (the CLI prints it once itself).
    """

    seen: ClassVar[set[str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            from modalities.errors import ClinfuseError

            if isinstance(exc, ClinfuseError) or getattr(exc, "one_line", False):
                record.exc_info, record.exc_text, record.stack_info = None, None, None
                self.seen.add(str(exc))
        return True


class _NotTwiceOnConsole(logging.Filter):
    """On the console handler: drop Prefect's error lines about a remembered user error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith("prefect"):
            return True
        text = record.getMessage()
        return not any(msg and msg in text for msg in _OneLineUserErrors.seen)


class _NoThreadTimeoutNotice(logging.Filter):
    """Drop Prefect's per-task notice that a timeout cannot interrupt a worker thread.

    Ingest sets ``timeout_seconds`` on every chunk task and accounts for an input that runs
    over itself (reason code TIMEOUT, docs/reason-codes.md); Prefect repeats the same notice
    for each of hundreds of chunks, burying the run's own output.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeouts in worker threads cannot interrupt" not in record.getMessage()


def quiet_user_errors(console: bool = True) -> None:
    """Install the filters above (idempotent); call after Prefect configured its logging.

    ``console=False`` keeps the (one-line) user-error records on the terminal too, for
    library use without the CLI.
    """
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineUserErrors) for f in logger.filters):
            logger.addFilter(_OneLineUserErrors())
        if not any(isinstance(f, _NoThreadTimeoutNotice) for f in logger.filters):
            logger.addFilter(_NoThreadTimeoutNotice())
    if not console:
        return
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler" and not any(
            isinstance(f, _NotTwiceOnConsole) for f in handler.filters
        ):
            handler.addFilter(_NotTwiceOnConsole())


def task_runner(workers: int, dask_address: str | None):
    """Threads on this machine, or prefect-dask on a cluster (``local`` = LocalCluster)."""
    if not dask_address:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask_address == "local":
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
        )
    return DaskTaskRunner(address=dask_address)
