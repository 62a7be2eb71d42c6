"""Start and stop real servers (MLflow, Prefect, ...) on loopback for tests.

Servers run as child processes in their own process group so a stop kills the whole tree
(gunicorn/uvicorn workers included), and are stopped by PID, never by name: other people's
servers on the same machine stay alone. Health is polled over HTTP; a server that does not
come up fails the test with the tail of its log, not a bare timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

PG_DSN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, n_chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return "<no log>"


@dataclass
class ServerHandle:
    """A running server: its process, its log file and the URL it answers on."""

    process: subprocess.Popen
    log_path: Path
    url: str
    started_in_s: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n_chars: int = 3000) -> str:
        return _log_tail(self.log_path, n_chars)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL what is left."""
        stop_process(self.process, timeout_s)


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Stop ``process`` and its group by PID: SIGTERM, wait ``timeout_s``, SIGKILL fallback."""
    if process.poll() is not None:
        return
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        return
    # The group was created for this child only (start_new_session), so killing it is safe.
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout_s)
    with suppress(ProcessLookupError):  # workers may outlive a master that already exited
        os.killpg(pgid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; raise with the log tail if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with code {process.returncode} before {url} answered; "
                f"log tail:\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last_error = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.3)
    raise RuntimeError(
        f"server did not answer {url} within {timeout_s:.0f} s (last error: {last_error}); "
        f"log tail:\n{_log_tail(log_path)}"
    )


def start_process(
    cmd: Sequence[str],
    health_url: str,
    env: Mapping[str, str] | None,
    log_path: Path,
    timeout_s: float = 90.0,
    base_url: str | None = None,
) -> ServerHandle:
    """Start ``cmd`` in its own process group, wait for ``health_url``, return a handle.

    ``env`` is added on top of the current environment. stdout/stderr go to ``log_path``.
    On failure the process is stopped and the error carries the log tail.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
    try:
        wait_healthy(health_url, process, log_path, timeout_s)
    except BaseException:
        stop_process(process)
        raise
    url = base_url or health_url.rsplit("/", 1)[0]
    return ServerHandle(process, log_path, url, started_in_s=time.monotonic() - t0)


def mlflow_server_cmd(backend_uri: str, artifacts_dir: Path, port: int) -> list[str]:
    """The ``mlflow server`` command line: one worker, proxied artifacts, loopback only."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts_dir),
    ]


def start_mlflow_server(
    backend_uri: str,
    artifacts_dir: Path,
    log_path: Path,
    port: int | None = None,
    timeout_s: float = 120.0,
) -> ServerHandle:
    """Start ``mlflow server`` on a free (or given) loopback port; wait for ``/health``.

    The timeout is generous: on 2 shared cores start-up took 12 s idle and 65 s under load.
    """
    port = port or free_port()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    env = {
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
        # The job runner forks ~7 huey consumers that tests never use (and that ignore SIGTERM).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    handle = start_process(
        mlflow_server_cmd(backend_uri, artifacts_dir, port),
        f"{base}/health",
        env,
        log_path,
        timeout_s=timeout_s,
        base_url=base,
    )
    handle.extra.update(backend_uri=backend_uri, artifacts_dir=artifacts_dir, port=port)
    return handle


def sqlite_uri(path: Path) -> str:
    """Absolute SQLite URI (four slashes: ``sqlite:////abs/path``)."""
    return f"sqlite:///{path.resolve()}"


@contextmanager
def postgres_database(prefix: str = "clinfuse_test") -> Iterator[str]:
    """Create a fresh PostgreSQL database with a unique name; drop it afterwards.

    Yields its SQLAlchemy URI. Needs the local server (127.0.0.1:5432, trust auth).
    """
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(**PG_DSN)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        user, host, port = PG_DSN["user"], PG_DSN["host"], PG_DSN["port"]
        yield f"postgresql+psycopg2://{user}@{host}:{port}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def postgres_available() -> bool:
    """True when the local PostgreSQL server accepts a connection."""
    try:
        import psycopg2

        psycopg2.connect(connect_timeout=3, **PG_DSN).close()
        return True
    except Exception:
        return False
