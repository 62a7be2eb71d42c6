"""One local Prefect server per PREFECT_HOME, reused by every CLI command.

Prefect's ephemeral mode starts a fresh API server in every process (6-28 s on 2 cores,
most of a short command's time). Instead the CLI starts one on first use and later commands
find it: a state file under ``$PREFECT_HOME`` holds its PID, port and Prefect version, a
file lock makes concurrent starts safe, and ``/api/health`` is checked before reuse (a dead
or foreign process is replaced). It runs what Prefect's ephemeral mode runs (same app, same
database ``$PREFECT_HOME/prefect.db``, no UI) on a free loopback port, detached from the
terminal, until ``clinfuse server stop``.

Prefect's own ``prefect server start --background`` was not used: it binds one fixed port
(4200) whatever PREFECT_HOME is, so two homes (parallel test sessions, two users) collide,
and it records no port to find the server by.

While a command runs, a watchdog thread restarts the server on the same port if it dies
(the command's Prefect client then reconnects instead of hanging on retries).

Not used when ``PREFECT_API_URL`` is set (a real server, e.g. compose) or when
``CLINFUSE_PREFECT_SERVER=ephemeral`` (each command then starts and stops its own server).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from modalities.errors import ClinfuseError

MODE_ENV = "CLINFUSE_PREFECT_SERVER"  # "shared" (default) or "ephemeral"
STATE_FILE = "clinfuse-server.json"
LOCK_FILE = "clinfuse-server.lock"
LOG_FILE = "clinfuse-server.log"
APP = "prefect.server.api.server:create_app"
WATCH_INTERVAL_S = 2.0  # how often a command checks that the shared server still runs


class ServerError(ClinfuseError):
    """The local Prefect server could not be started."""


def prefect_home() -> Path:
    """``$PREFECT_HOME`` or Prefect's default ``~/.prefect``."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def mode() -> str:
    """``external`` (PREFECT_API_URL set), ``ephemeral`` or ``shared``."""
    if os.environ.get("PREFECT_API_URL", "").strip():
        return "external"
    value = os.environ.get(MODE_ENV, "shared").strip().lower() or "shared"
    if value not in ("shared", "ephemeral"):
        raise ClinfuseError(f"{MODE_ENV} must be 'shared' or 'ephemeral' (got {value!r})")
    return value


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    """True when ``pid`` runs the Prefect API app (not a recycled PID, not a zombie)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the PID
    return APP.encode() in cmdline


def read_state(home: Path | None = None) -> dict[str, Any] | None:
    """The recorded server (``pid``, ``port``, ``url``, ``version``) or None."""
    path = (home or prefect_home()) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(home: Path):
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(home: Path, port: int) -> subprocess.Popen[bytes]:
    from importlib.util import find_spec

    spec = find_spec("prefect")  # its location only: importing prefect here costs seconds
    if spec is None or spec.origin is None:
        raise ServerError("prefect is not installed")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(spec.origin).parents[1]),
        "--factory",
        APP,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    log = open(home / LOG_FILE, "ab")  # noqa: SIM115  (the child keeps it open)
    try:
        # A new session: Ctrl-C on the command that started it does not stop the server.
        return subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()


def _start(home: Path, timeout: float, fixed_port: int | None = None) -> dict[str, Any]:
    """Spawn a server (on ``fixed_port``, else a free one; 3 tries) and record it once
    healthy."""
    for _ in range(1 if fixed_port else 3):  # a port taken between probe and bind: retry
        port = fixed_port or _free_port()
        proc = _spawn(home, port)
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _healthy(url, 1.0):
                state = {
                    "pid": proc.pid,
                    "port": port,
                    "url": url,
                    "version": _prefect_version(),
                    "started": time.time(),
                }
                tmp = home / f"{STATE_FILE}.tmp"
                tmp.write_text(json.dumps(state))
                tmp.replace(home / STATE_FILE)
                return state
            time.sleep(0.1)
        else:
            _terminate(proc.pid)
            raise ServerError(
                f"the local Prefect server did not answer within {timeout:.0f} s; see "
                f"{home / LOG_FILE}, or set {MODE_ENV}=ephemeral"
            )
    raise ServerError(f"the local Prefect server exited at start; see {home / LOG_FILE}")


def _terminate(pid: int, wait: float = 15.0) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def ensure_server(timeout: float | None = None) -> str | None:
    """Point this process at the shared server, starting it if needed; return its API URL.

    Call before Prefect is imported (its settings are read at import). Returns None and does
    nothing in ``external`` and ``ephemeral`` mode.
    """
    if mode() != "shared":
        return None
    home = prefect_home()
    timeout = timeout or float(
        os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    )
    try:
        lock = _locked(home)
        lock.__enter__()
    except OSError as err:
        raise ServerError(
            f"cannot use PREFECT_HOME {home} ({err.strerror}); point "
            "PREFECT_HOME at a writable folder"
        ) from None
    try:
        state = read_state(home)
        usable = (
            state is not None
            and state.get("version") == _prefect_version()
            and _alive(int(state["pid"]))
            and _healthy(state["url"])
        )
        if not usable:
            if state is not None and _alive(int(state["pid"])):
                _terminate(int(state["pid"]))  # an older Prefect's server, or hung
            state = _start(home, timeout)
    finally:
        lock.__exit__(None, None, None)
    os.environ["PREFECT_API_URL"] = state["url"]
    threading.Thread(
        target=_watch, args=(home, timeout), name="clinfuse-prefect-watchdog", daemon=True
    ).start()
    return state["url"]


def _watch(home: Path, timeout: float, interval: float = WATCH_INTERVAL_S) -> None:
    """While this command runs: restart the shared server on its port if it dies.

    A server killed mid-run (OOM, a stray ``kill``) otherwise leaves the command hanging
    on its Prefect client's retries after the work is done. The restarted server opens the
    same database and answers at the same URL, so the flow's client carries on. Stops when
    the server is stopped on purpose (``clinfuse server stop`` removes the state file) or
    cannot be restarted (then the command's own error says so).
    """
    while True:
        time.sleep(interval)
        state = read_state(home)
        if state is None:
            return
        pid = int(state["pid"])
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if this command started it
        if _alive(pid):
            continue
        try:
            with _locked(home):
                now = read_state(home)
                if now is None:
                    return
                if int(now["pid"]) == pid:  # nobody restarted it yet
                    _start(home, timeout, fixed_port=int(state["port"]))
        except (OSError, ServerError):
            return


def stop_server(home: Path | None = None) -> dict[str, Any] | None:
    """Stop the shared server of ``home`` (default: this PREFECT_HOME); return what ran."""
    home = home or prefect_home()
    with _locked(home):
        state = read_state(home)
        if state is None:
            return None
        if _alive(int(state["pid"])):
            _terminate(int(state["pid"]))
        (home / STATE_FILE).unlink(missing_ok=True)
    return state


def server_status(home: Path | None = None) -> dict[str, Any]:
    """What runs for ``home``: mode, and the server's PID/URL/health if one is recorded."""
    home = home or prefect_home()
    state = read_state(home)
    out: dict[str, Any] = {"mode": mode(), "prefect_home": str(home), "running": False}
    if os.environ.get("PREFECT_API_URL"):
        out["api_url"] = os.environ["PREFECT_API_URL"]
    if state is not None:
        running = _alive(int(state["pid"])) and _healthy(state["url"])
        out |= {
            "running": running,
            "pid": state["pid"],
            "api_url": state["url"],
            "version": state.get("version"),
        }
    return out
