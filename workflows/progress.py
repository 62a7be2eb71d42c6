"""Progress for long commands: rich bars on a terminal, plain lines when forced, else nothing.

Flows and tasks run in the CLI's own process (tasks in threads), so one process-wide
reporter is enough: the CLI installs it with ``use(...)``, flows call ``reporter()`` and
report through three verbs (``start``, ``update``, ``finish``). Nothing here is written to
Prefect or MLflow and only counts and metric values are shown (no PHI).

Output goes to stderr. It is on by default on a terminal, off with ``--json`` or when stderr
is not a terminal; ``--progress`` or ``CLINFUSE_PROGRESS=1`` forces it on (then, without a
terminal, one line per update), ``--no-progress`` or ``CLINFUSE_PROGRESS=0`` turns it off.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

ENV = "CLINFUSE_PROGRESS"


class Reporter:
    """The no-op reporter (also the interface)."""

    def start(self, key: str, description: str, total: float | None = None) -> None:
        """Begin (or restart) the bar ``key``."""

    def update(
        self,
        key: str,
        completed: float | None = None,
        advance: float = 0,
        total: float | None = None,
        info: str = "",
    ) -> None:
        """Move bar ``key`` to ``completed`` (or by ``advance``); ``info`` trails the bar."""

    def finish(self, key: str, info: str = "") -> None:
        """Mark bar ``key`` complete."""

    def close(self) -> None:
        """Stop drawing (end of the command)."""


class LineReporter(Reporter):
    """One plain line per update on ``stream`` (logs, CI, tests: no terminal needed)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bars: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def _write(self, key: str, info: str = "") -> None:
        bar = self.bars[key]
        total = bar["total"]
        count = f"{bar['completed']:g}/{total:g}" if total else f"{bar['completed']:g}"
        self.stream.write(f"{bar['description']}: {count}{'  ' + info if info else ''}\n")
        self.stream.flush()

    def start(self, key: str, description: str, total: float | None = None) -> None:
        with self.lock:
            self.bars[key] = {"description": description, "total": total, "completed": 0}

    def update(
        self,
        key: str,
        completed: float | None = None,
        advance: float = 0,
        total: float | None = None,
        info: str = "",
    ) -> None:
        with self.lock:
            bar = self.bars.setdefault(key, {"description": key, "total": None, "completed": 0})
            if total is not None:
                bar["total"] = total
            bar["completed"] = completed if completed is not None else bar["completed"] + advance
            self._write(key, info)

    def finish(self, key: str, info: str = "") -> None:
        with self.lock:
            bar = self.bars.get(key)
            if bar is None:
                return
            if bar["total"]:
                bar["completed"] = bar["total"]
            self.stream.write(f"{bar['description']}: done{'  ' + info if info else ''}\n")
            self.stream.flush()


class RichReporter(Reporter):
    """Rich progress bars on a stderr console (one row per key)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.progress.start()

    def start(self, key: str, description: str, total: float | None = None) -> None:
        with self.lock:
            if key in self.tasks:
                self.progress.reset(self.tasks[key], total=total, description=description, info="")
            else:
                self.tasks[key] = self.progress.add_task(description, total=total, info="")

    def update(
        self,
        key: str,
        completed: float | None = None,
        advance: float = 0,
        total: float | None = None,
        info: str = "",
    ) -> None:
        with self.lock:
            if key not in self.tasks:
                self.tasks[key] = self.progress.add_task(key, total=total, info="")
            kw: dict[str, Any] = {"info": info}
            if total is not None:
                kw["total"] = total
            if completed is not None:
                kw["completed"] = completed
            else:
                kw["advance"] = advance
            self.progress.update(self.tasks[key], **kw)

    def finish(self, key: str, info: str = "") -> None:
        with self.lock:
            if key in self.tasks:
                tid = self.tasks[key]
                total = next(t.total for t in self.progress.tasks if t.id == tid)
                kw = {"info": info} if info else {}
                self.progress.update(tid, completed=total or 1, total=total or 1, **kw)

    def close(self) -> None:
        self.progress.stop()


_current: Reporter = Reporter()


def reporter() -> Reporter:
    """The reporter the CLI installed (a no-op one otherwise: library and test use)."""
    return _current


def wanted(flag: bool | None, as_json: bool) -> bool | None:
    """Resolve ``--progress/--no-progress`` and $CLINFUSE_PROGRESS.

    Returns True (forced on), False (off) or None (auto: on for a terminal).
    """
    if flag is not None:
        return flag
    env = os.environ.get(ENV, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off") or as_json:
        return False
    return None


def make_reporter(flag: bool | None = None, as_json: bool = False) -> Reporter:
    """The reporter for a command: rich on a terminal, lines when forced, else none."""
    want = wanted(flag, as_json)
    tty = sys.stderr.isatty()
    if want is False or (want is None and not tty):
        return Reporter()
    return RichReporter() if tty else LineReporter()


@contextmanager
def use(rep: Reporter) -> Iterator[Reporter]:
    """Install ``rep`` as the process-wide reporter for the block (and close it after)."""
    global _current
    previous, _current = _current, rep
    try:
        yield rep
    finally:
        _current = previous
        rep.close()


def _fmt(v: Any) -> str:
    return "n/a" if not isinstance(v, int | float) or math.isnan(v) else f"{v:.3f}"


def epoch_callback(max_epochs: int, monitor: str) -> Callable[[str, int, dict[str, float]], None]:
    """``on_epoch(variant, epoch, metrics)`` drawing one bar per trained variant.

    Shows the epoch count, the training loss and the validation metric that early stopping
    watches (``val_<monitor>``). A variant that stops early leaves its bar where it stopped;
    the next variant's first epoch closes it.
    """
    state: dict[str, str | None] = {"variant": None}

    def on_epoch(variant: str, epoch: int, metrics: dict[str, float]) -> None:
        rep = reporter()
        key = f"train:{variant}"
        if state["variant"] != variant:
            if state["variant"] is not None:
                rep.finish(f"train:{state['variant']}")
            state["variant"] = variant
            rep.start(key, f"train {variant}", max_epochs)
        info = (
            f"epoch {epoch + 1}/{max_epochs} loss {_fmt(metrics.get('train_loss'))} "
            f"val_{monitor} {_fmt(metrics.get(f'val_{monitor}'))}"
        )
        rep.update(key, completed=epoch + 1, info=info)

    return on_epoch


def counter(key: str, description: str, unit: str) -> Callable[[int, int], None]:
    """``progress(done, total)`` for a loop that reports counts (scoring patients)."""
    started = {"yes": False}

    def progress(done: int, total: int) -> None:
        rep = reporter()
        if not started["yes"]:
            rep.start(key, description, total)
            started["yes"] = True
        rep.update(key, completed=done, total=total, info=f"{done}/{total} {unit}")

    return progress
