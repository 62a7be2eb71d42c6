"""The production stack's files: compose.yaml, the Dockerfile, prefect.yaml and deploy/.

No Docker engine runs here, so the stack is checked in layers: the compose file against the
Compose Specification schema (check-jsonschema), the rules it must keep (pinned images,
secrets only from the environment, only the UIs published, health-gated start order) with
PyYAML, and the pieces that can run without containers for real: deploy/init-db.sh against
the local PostgreSQL, and (slow) the MLflow basic-auth server and the Prefect server started
with compose.yaml's own arguments on the databases that script creates.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
GPU_OVERRIDE = ROOT / "deploy" / "compose.gpu.yaml"
DOCKERFILE = ROOT / "Dockerfile"
PREFECT_YAML = ROOT / "prefect.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
INIT_DB = ROOT / "deploy" / "init-db.sh"
AUTH_INI = ROOT / "deploy" / "mlflow-auth.ini"
USERS_SCRIPT = ROOT / "deploy" / "mlflow_users.py"
DASK_TLS_SCRIPT = ROOT / "deploy" / "dask_tls.py"
DASK_TLS_DIR = "/etc/clinfuse/dask-tls"
LOCK = ROOT / "deploy" / "requirements.lock"
VENV_BIN = Path(sys.executable).parent

# Environment keys whose values are credentials: they must come from ${VAR:?message}.
SECRET_KEY_RE = re.compile(r"PASSWORD|SECRET|AUTH_STRING|PSEUDONYM_KEY|PGPASSWORD")
# ${VAR}, ${VAR:-default}, ${VAR:?message}; $${...} is a literal for the container's shell.
VAR_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
REQUIRED_RE = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]+\}$")
ONE_SHOT = {"minio-init", "mlflow-init", "tls-init"}
UI_PORTS = {"mlflow": 5000, "prefect-server": 4200}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _compose_values() -> str:
    """All string values of compose.yaml (comments excluded), one per line."""
    return "\n".join(_strings(yaml.safe_load(COMPOSE.read_text())))


def _defaults(text: str) -> str:
    """Resolve ``${VAR:-default}`` to its default (what compose does with VAR unset)."""
    return VAR_RE.sub(lambda m: m.group(3) if m.group(2) == ":-" else m.group(0), text)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (KEY: value), not a list"
    return {k: str(v) for k, v in env.items()}


# --- the Compose Specification ---------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, GPU_OVERRIDE], ids=["compose", "gpu-override"])
def test_compose_files_match_the_compose_spec(path: Path) -> None:
    exe = VENV_BIN / "check-jsonschema"
    if not exe.exists():
        found = shutil.which("check-jsonschema")
        if found is None:
            pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
        exe = Path(found)
    res = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_expected_services(services: dict[str, Any]) -> None:
    assert set(services) == {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "mlflow-init",
        "prefect-server",
        "worker",
        "dask-scheduler",
        "dask-worker",
        "tls-init",
    }
    assert "version" not in yaml.safe_load(COMPOSE.read_text())


# --- images ----------------------------------------------------------------------------------


def test_every_image_is_pinned_or_built_here(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = svc.get("image", "")
        if "build" in svc:
            assert image.startswith("clinfuse:"), f"{name}: built image needs a clinfuse tag"
            continue
        assert ":" in image, f"{name}: image {image!r} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest", f"{name}: 'latest' is not a pin"
        # A release stamp, or major.minor at least (postgres:16 would float across minors).
        assert re.match(r"RELEASE\.\d{4}-|\d+\.\d+", tag) or "@sha256:" in image, (
            f"{name}: tag {tag!r} is not a pinned release"
        )


def test_python_services_share_the_project_image(services: dict[str, Any]) -> None:
    built = {n for n, s in services.items() if "build" in s}
    assert built == {
        "mlflow",
        "mlflow-init",
        "prefect-server",
        "worker",
        "dask-scheduler",
        "dask-worker",
        "tls-init",
    }
    assert len({services[n]["image"] for n in built}) == 1
    assert len({repr(services[n]["build"]) for n in built}) == 1


# --- secrets ---------------------------------------------------------------------------------


def test_secret_variables_are_required_never_defaulted() -> None:
    refs = [(m.group(1), m.group(2), m.group(3)) for m in VAR_RE.finditer(_compose_values())]
    assert refs, "compose.yaml should read its settings from the environment"
    for var, op, arg in refs:
        if SECRET_KEY_RE.search(var):
            assert op == ":?", f"${{{var}}} must be written ${{{var}:?message}} (no default)"
            assert arg and len(arg) > 10, f"${{{var}:?}} needs a message saying what to set"
    required = {v for v, op, _ in refs if op == ":?"}
    assert {
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "CLINFUSE_PSEUDONYM_KEY",
        "MLFLOW_DB_PASSWORD",
        "PREFECT_DB_PASSWORD",
        "CLINFUSE_DB_PASSWORD",
        "MLFLOW_S3_SECRET_KEY",
        "MLFLOW_FLASK_SECRET_KEY",
        "CLINFUSE_MLFLOW_PASSWORD",
        "PREFECT_AUTH_STRING",
        "DICOM_DROP_DIR",
        "NOTES_DIR",
    } <= required


def test_no_literal_credentials(services: dict[str, Any]) -> None:
    assert "change-me" not in COMPOSE.read_text()
    for name, svc in services.items():
        for key, value in _env(svc).items():
            if SECRET_KEY_RE.search(key):
                assert REQUIRED_RE.match(value), f"{name}.{key} must be exactly ${{VAR:?msg}}"
        for s in _strings(svc):
            for m in re.finditer(r"[a-z+]+://[^/@\s:]+:([^@\s]+)@", s):
                assert REQUIRED_RE.match(m.group(1)), f"{name}: URL with a literal password"


def test_database_urls_name_their_driver(services: dict[str, Any]) -> None:
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the image does not have."""
    urls = [u for u in _strings(services) if "postgres:5432" in u]
    urls.append(configparser.ConfigParser(interpolation=None))
    parser = urls.pop()
    parser.read(AUTH_INI)
    urls.append(parser["mlflow"]["database_uri"])
    assert len(urls) >= 4
    for url in urls:
        assert re.match(r"postgresql\+(psycopg2|asyncpg)://", url), url


def test_env_example_lists_every_required_variable_without_real_secrets() -> None:
    required = {m.group(1) for m in VAR_RE.finditer(_compose_values()) if m.group(2) == ":?"}
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert required <= set(values), f"missing from .env.example: {required - set(values)}"
    for key, value in values.items():
        if SECRET_KEY_RE.search(key):
            assert value in ("change-me", "admin:change-me"), f"{key}: placeholder only"


# --- network exposure ------------------------------------------------------------------------


def test_only_the_two_uis_are_published_on_bind_address(services: dict[str, Any]) -> None:
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == set(UI_PORTS)
    for name, container_port in UI_PORTS.items():
        (port,) = services[name]["ports"]
        assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), port
        assert port.endswith(f":{container_port}"), port


# Who may join which network: only the UIs are routed; the Dask scheduler sits alone with
# its clients on the internal dask network; tls-init needs no network at all.
NETWORKS = {
    "mlflow": {"backend", "frontend"},
    "prefect-server": {"backend", "frontend"},
    "worker": {"backend", "dask"},
    "dask-worker": {"backend", "dask"},
    "dask-scheduler": {"dask"},
    "tls-init": set(),
}


def test_networks_have_no_route_out_and_dask_is_fenced(compose: dict[str, Any]) -> None:
    assert compose["networks"]["backend"]["internal"] is True
    assert compose["networks"]["dask"]["internal"] is True
    for name, svc in compose["services"].items():
        nets = set(svc.get("networks", []))
        assert nets == NETWORKS.get(name, {"backend"}), name
    assert compose["services"]["tls-init"]["network_mode"] == "none"


# --- health and start order ------------------------------------------------------------------


def test_long_running_services_restart_and_have_healthchecks(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
            continue
        assert svc.get("restart") == "unless-stopped", name
        hc = svc.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"{name}: no healthcheck"
        assert "start_period" in hc, f"{name}: healthcheck needs a start_period"


def test_depends_on_waits_on_health_or_completion(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions, not a list"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == want, f"{name} -> {dep}"
            # A default-profile service must not need a service that only a profile starts.
            if not svc.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} -> profiled {dep}"
    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["mlflow"]["condition"] == "service_healthy"
    assert worker_deps["prefect-server"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == (
        "service_completed_successfully"
    )


def test_postgres_probe_waits_for_tcp_and_init_script_is_mounted(services: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "-h 127.0.0.1" in " ".join(pg["healthcheck"]["test"])
    mounts = [v for v in pg["volumes"] if isinstance(v, str) and "initdb.d" in v]
    assert mounts and mounts[0].startswith("./deploy/init-db.sh:")
    assert os.access(INIT_DB, os.X_OK)


# --- the services ----------------------------------------------------------------------------


def test_mlflow_server_arguments(services: dict[str, Any]) -> None:
    svc = services["mlflow"]
    cmd = [_defaults(str(c)) for c in svc["command"]]
    args = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert cmd[0] == "server"
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1].startswith("s3://")
    backend = cmd[cmd.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://") and "@postgres:5432/" in backend
    hosts = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow", "mlflow:5000", "localhost:*", "127.0.0.1:*"} <= set(hosts)
    assert cmd[cmd.index("--workers") + 1] == "2"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert args  # parsed
    env = _env(svc)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    mount = next(v for v in svc["volumes"] if "mlflow-auth.ini" in v)
    src, target, mode = mount.split(":")
    assert (ROOT / src).resolve() == AUTH_INI and target == env["MLFLOW_AUTH_CONFIG_PATH"]
    assert mode == "ro"


def test_mlflow_auth_ini_is_read_by_mlflow_and_holds_no_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.permissions import ALL_PERMISSIONS

    parser = configparser.ConfigParser()
    parser.read(AUTH_INI)
    assert "admin_password" not in parser["mlflow"]
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(AUTH_INI))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-environment")
    cfg = read_auth_config()
    assert cfg.admin_password == "from-the-environment"
    assert cfg.default_permission in ALL_PERMISSIONS
    assert cfg.database_uri == "postgresql+psycopg2://mlflow@postgres:5432/mlflow_auth"


def test_prefect_server_on_postgres(services: dict[str, Any]) -> None:
    svc = services["prefect-server"]
    assert svc["entrypoint"] == ["prefect"]
    assert svc["command"][:2] == ["server", "start"]
    assert svc["command"][svc["command"].index("--host") + 1] == "0.0.0.0"
    env = _env(svc)
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "/api/health" in " ".join(svc["healthcheck"]["test"])


def test_worker_serves_with_read_only_inputs(services: dict[str, Any]) -> None:
    svc = services["worker"]
    assert svc["command"] == ["serve"]
    assert "entrypoint" not in svc  # the image's ENTRYPOINT ["clinfuse"]
    env = _env(svc)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    for key in (
        "CLINFUSE_PSEUDONYM_KEY",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "CLINFUSE_DB_URL",
        "CLINFUSE_DATA_ROOT",
        "PREFECT_API_AUTH_STRING",
    ):
        assert key in env, key
    assert env["CLINFUSE_DB_URL"].startswith("postgresql+psycopg2://clinfuse:")
    # The worker signs in with its own account, never the MLflow admin's.
    assert "MLFLOW_ADMIN_PASSWORD" not in env["MLFLOW_TRACKING_PASSWORD"]
    binds = {v["target"]: v for v in svc["volumes"] if v["type"] == "bind"}
    assert set(binds) == {"/data/dicom-drop", "/data/notes"}
    assert all(v["read_only"] for v in binds.values())
    assert env["PREFECT_RUNNER_SERVER_ENABLE"] == "true"
    assert env["PREFECT_RUNNER_SERVER_PORT"] in " ".join(svc["healthcheck"]["test"])


def test_dask_services_only_under_their_profile(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name.startswith("dask-"):
            assert svc.get("profiles") == ["dask"], name
            assert svc["entrypoint"] == ["dask"]
        else:
            assert not svc.get("profiles"), name
    assert services["dask-scheduler"]["command"][0] == "scheduler"
    assert services["dask-worker"]["command"][:2] == ["worker", "tls://dask-scheduler:8786"]
    # Dask workers run the same ingest tasks, so they see the same inputs and key.
    assert services["dask-worker"]["volumes"] == services["worker"]["volumes"]
    assert (
        _env(services["dask-worker"])["CLINFUSE_PSEUDONYM_KEY"]
        == _env(services["worker"])["CLINFUSE_PSEUDONYM_KEY"]
    )


def _tls_mount(svc: dict[str, Any]) -> tuple[str, bool] | None:
    """(volume source, read_only) of the service's mount at DASK_TLS_DIR, if any."""
    for v in svc.get("volumes", []):
        if isinstance(v, dict) and v.get("target") == DASK_TLS_DIR:
            return v["source"], bool(v.get("read_only"))
        if isinstance(v, str) and v.split(":")[1] == DASK_TLS_DIR:
            return v.split(":")[0], v.endswith(":ro")
    return None


def test_dask_speaks_mutual_tls_only(services: dict[str, Any]) -> None:
    sched = services["dask-scheduler"]["command"]
    assert sched[sched.index("--protocol") + 1] == "tls"
    for name in ("dask-scheduler", "dask-worker", "worker"):
        env, svc = _env(services[name]), services[name]
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "true", name
        assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == f"{DASK_TLS_DIR}/ca.pem"
        for role in ("SCHEDULER", "WORKER", "CLIENT"):
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"].startswith(DASK_TLS_DIR)
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"].startswith(DASK_TLS_DIR)
        assert _tls_mount(svc) == ("dask-tls", True), f"{name} must mount the certs read-only"
        assert (
            svc["depends_on"].get("tls-init", {}).get("condition")
            == ("service_completed_successfully")
            or name == "dask-worker"
        )
    # Only tls-init writes the volume, and it runs the script that ships in the image.
    writers = [n for n, s in services.items() if (_tls_mount(s) or ("", True))[1] is False]
    assert writers == ["tls-init"]
    init = services["tls-init"]
    assert init["entrypoint"] == ["python", "/opt/clinfuse/deploy/dask_tls.py"]
    assert init["command"][0] == DASK_TLS_DIR and "10001:10001" in init["command"]
    assert DASK_TLS_SCRIPT.exists()


def test_dask_tls_script_writes_a_private_key_and_converges(tmp_path: Path) -> None:
    from cryptography import x509

    out = tmp_path / "tls"
    for expected in ("new CA", "kept"):
        res = subprocess.run(
            [sys.executable, str(DASK_TLS_SCRIPT), str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert expected in res.stdout
    assert (out / "dask-key.pem").stat().st_mode & 0o077 == 0
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((out / "dask.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert not any(
        "PRIVATE KEY" in p.read_text() for p in out.iterdir() if p.name != "dask-key.pem"
    )  # the CA key is never written


@pytest.mark.slow
def test_dask_cluster_with_compose_settings_refuses_strangers(
    services: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Scheduler and worker started with compose.yaml's commands and TLS settings (paths
    swapped for local ones): a client with the stack's certificate computes; plain TCP and a
    certificate from another CA are refused."""
    from tests.servers import free_port, start_process

    certs, other = tmp_path / "certs", tmp_path / "other"
    for d in (certs, other):
        subprocess.run(
            [sys.executable, str(DASK_TLS_SCRIPT), str(d)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    env = {
        k: v.replace(DASK_TLS_DIR, str(certs)) for k, v in _env(services["dask-scheduler"]).items()
    }
    port, dash, wdash = free_port(), free_port(), free_port()
    dask = str(VENV_BIN / "dask") if (VENV_BIN / "dask").exists() else "dask"
    cmd = [str(c) for c in services["dask-scheduler"]["command"]]
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--dashboard-address") + 1] = f"127.0.0.1:{dash}"
    sched = start_process(
        [dask, *cmd, "--host", "127.0.0.1"],
        f"http://127.0.0.1:{dash}/health",
        env,
        tmp_path / "sched.log",
        timeout_s=120,
    )
    worker = None
    try:
        wcmd = [str(c) for c in services["dask-worker"]["command"]]
        wcmd[1] = wcmd[1].replace("dask-scheduler:8786", f"127.0.0.1:{port}")
        wcmd[wcmd.index("--dashboard-address") + 1] = f"127.0.0.1:{wdash}"
        wcmd[wcmd.index("--memory-limit") + 1] = "1GiB"
        worker = start_process(
            [dask, *wcmd, "--host", "127.0.0.1"],
            f"http://127.0.0.1:{wdash}/health",
            env,
            tmp_path / "worker.log",
            timeout_s=120,
        )
        probe = (
            "import sys\n"
            "from distributed import Client\n"
            "try:\n"
            "    c = Client(sys.argv[1], timeout=15)\n"
            "    print('computed', c.submit(sum, [1, 2]).result(timeout=30))\n"
            "except Exception as e:\n"
            "    print('refused', type(e).__name__)\n"
        )

        def client(address: str, extra: dict[str, str]) -> str:
            full = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
            res = subprocess.run(
                [sys.executable, "-c", probe, address],
                env={**full, **extra},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr

        assert client(f"tls://127.0.0.1:{port}", env) == "computed 3"
        assert client(f"tcp://127.0.0.1:{port}", {}).startswith("refused")
        foreign = {
            **env,
            **{k: v.replace(str(certs), str(other)) for k, v in env.items() if "CLIENT__" in k},
        }
        assert client(f"tls://127.0.0.1:{port}", foreign).startswith("refused")
        assert "certificate verify failed" in (tmp_path / "sched.log").read_text()
    finally:
        if worker is not None:
            worker.stop()
        sched.stop()


# --- docker compose config (client side; skipped when the compose plugin is absent) ----------


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        res = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        if res.returncode == 0 and re.search(r"v?2\.|v?[3-9]\.", res.stdout):
            return cmd
    return None


def _dummy_env(tmp_path: Path) -> dict[str, str]:
    required = {m.group(1) for m in VAR_RE.finditer(_compose_values()) if m.group(2) == ":?"}
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    for var in required:
        env[var] = str(tmp_path) if var.endswith("_DIR") else f"dummy-{var.lower()}"
    return env


def test_docker_compose_config_resolves_and_refuses_missing_secrets(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 client here (docker compose / docker-compose)")
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base = [*cli, "--env-file", str(empty_env_file), "-f", str(COMPOSE)]
    env = _dummy_env(tmp_path)
    ok = subprocess.run(
        [*base, "config", "-q"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert ok.returncode == 0, ok.stderr
    ok = subprocess.run(
        [*base, "--profile", "dask", "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    env.pop("POSTGRES_PASSWORD")
    bad = subprocess.run(
        [*base, "config", "-q"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert bad.returncode != 0
    assert "POSTGRES_PASSWORD" in bad.stderr and "openssl rand" in bad.stderr


# --- Dockerfile, lock, .dockerignore ---------------------------------------------------------


def _dockerfile() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(ARG defaults, [(instruction, rest)]) with line continuations joined."""
    # Docker drops comment lines before joining continuations; do the same.
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    args: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instructions.append((instr.upper(), rest.strip()))
        if instr.upper() == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
    return args, instructions


def test_dockerfile_pins_cpu_torch_and_drops_root() -> None:
    args, instructions = _dockerfile()
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", args["PYTHON_IMAGE"]
    )
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [rest for instr, rest in instructions if instr == "RUN"]
    torch_runs = [r for r in runs if "torch==" in r]
    assert torch_runs and '--index-url "$TORCH_INDEX_URL"' in torch_runs[0]
    users = [rest for instr, rest in instructions if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (instr, _) in enumerate(instructions) if instr == "USER")
    first_entry = min(i for i, (instr, _) in enumerate(instructions) if instr == "ENTRYPOINT")
    assert last_user < first_entry
    assert ("ENTRYPOINT", '["clinfuse"]') in instructions
    envs = " ".join(rest for instr, rest in instructions if instr == "ENV")
    assert "HF_HUB_OFFLINE=1" in envs


def test_dockerfile_copies_every_package_and_existing_paths() -> None:
    import tomllib

    _, instructions = _dockerfile()
    sources = set()
    for instr, rest in instructions:
        if instr == "COPY" and "--from" not in rest:
            sources.update(rest.split()[:-1])
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources, f"package {pattern} not copied into the image"
    assert "configs" in sources and "README.md" in sources


def test_lock_pins_every_dependency() -> None:
    import tomllib

    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name.lower()) in pins, f"{name} is not in the lock"
    assert pins["torch"] == "2.13.0"  # no +cpu: the CUDA build must satisfy it too
    assert "flask-wtf" in pins  # the basic-auth app needs it
    assert "pytest" not in pins and "clinfuse" not in pins


def test_dockerignore_keeps_secrets_out_and_sources_in() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    assert ".env" in patterns and ".git" in patterns and ".venv" in patterns
    _, instructions = _dockerfile()
    for instr, rest in instructions:
        if instr == "COPY":
            for src in rest.split()[:-1]:
                assert src not in patterns and src.split("/")[0] + "/" not in patterns, src


# --- prefect.yaml ----------------------------------------------------------------------------


def test_prefect_yaml_deployments() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule

    model = PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    by_name = {d.name: d for d in model.deployments}
    assert set(by_name) == {"nightly", "score"}
    assert by_name["nightly"].entrypoint == "workflows/nightly.py:nightly_flow"
    assert by_name["score"].entrypoint == "workflows/score.py:score_flow"
    for dep in model.deployments:
        assert dep.work_pool is not None and dep.work_pool.name == "clinfuse-process"
    (nightly,) = by_name["nightly"].schedules
    CronSchedule(cron=nightly.cron, timezone=nightly.timezone)  # raises on a bad expression
    assert not by_name["score"].schedules


@pytest.mark.parametrize("deployment", ["nightly", "score"])
def test_prefect_yaml_entrypoints_exist(deployment: str) -> None:
    spec = {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    path, _, func = spec[deployment]["entrypoint"].partition(":")
    source = ROOT / path
    if not source.exists():
        pytest.skip(f"{path} is not written yet")
    tree = ast.parse(source.read_text())
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert func in defs, f"{path} defines no top-level {func}"
    decorators = [ast.unparse(d) for d in defs[func].decorator_list]
    assert any(re.match(r"(prefect\.)?flow\b", d) for d in decorators), decorators


# --- deploy/init-db.sh on the real local PostgreSQL ------------------------------------------


def _psql(sql: str, db: str = "postgres") -> str:
    res = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAX", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _postgres_ready() -> bool:
    if shutil.which("psql") is None:
        return False
    res = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "select 1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return res.returncode == 0


@pytest.fixture(scope="module")
def stack_db() -> Iterator[dict[str, str]]:
    """Run deploy/init-db.sh with unique role/database names; drop them afterwards."""
    if not _postgres_ready():
        pytest.skip("no psql or no local PostgreSQL on 127.0.0.1:5432")
    tag = uuid.uuid4().hex[:8]
    names = {
        "MLFLOW_DB_USER": f"t{tag}_mlflow",
        "MLFLOW_DB_NAME": f"t{tag}_mlflow",
        "MLFLOW_AUTH_DB_NAME": f"t{tag}_mlflow_auth",
        "PREFECT_DB_USER": f"t{tag}_prefect",
        "PREFECT_DB_NAME": f"t{tag}_prefect",
        "CLINFUSE_DB_USER": f"t{tag}_clinfuse",
        "CLINFUSE_DB_NAME": f"t{tag}_clinfuse",
    }
    env = {
        **os.environ,
        **names,
        "PGHOST": "127.0.0.1",
        "PGPORT": "5432",
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "postgres",
        # Quotes, a semicolon and a backslash: a password must never be parsed as SQL.
        "MLFLOW_DB_PASSWORD": "it's; DROP ROLE postgres; --\\",
        "PREFECT_DB_PASSWORD": "p" * 64,
        "CLINFUSE_DB_PASSWORD": "c" * 64,
    }
    try:
        for _ in range(2):  # idempotent: a second run converges instead of failing
            res = subprocess.run(
                ["bash", str(INIT_DB)], env=env, capture_output=True, text=True, timeout=120
            )
            assert res.returncode == 0, res.stderr
        yield {**names, **{k: env[k] for k in env if k.endswith("_PASSWORD")}}
    finally:
        for key in ("MLFLOW_DB_NAME", "MLFLOW_AUTH_DB_NAME", "PREFECT_DB_NAME", "CLINFUSE_DB_NAME"):
            _psql(f'DROP DATABASE IF EXISTS "{names[key]}" WITH (FORCE)')
        for key in ("MLFLOW_DB_USER", "PREFECT_DB_USER", "CLINFUSE_DB_USER"):
            _psql(f'DROP ROLE IF EXISTS "{names[key]}"')


def test_init_db_creates_private_databases_owned_by_their_roles(
    stack_db: dict[str, str],
) -> None:
    owners = {
        "MLFLOW_DB_NAME": "MLFLOW_DB_USER",
        "MLFLOW_AUTH_DB_NAME": "MLFLOW_DB_USER",
        "PREFECT_DB_NAME": "PREFECT_DB_USER",
        "CLINFUSE_DB_NAME": "CLINFUSE_DB_USER",
    }
    for db_key, role_key in owners.items():
        db = stack_db[db_key]
        owner, acl = _psql(
            f"SELECT pg_get_userbyid(datdba), datacl::text FROM pg_database WHERE datname = '{db}'"
        ).split("|")
        assert owner == stack_db[role_key]
        # PUBLIC's entry in an ACL reads "=c/owner" (no role name before "="): revoked.
        assert not re.search(r"[{,]=", acl), f"{db} still grants PUBLIC: {acl}"
    for role_key in ("MLFLOW_DB_USER", "PREFECT_DB_USER", "CLINFUSE_DB_USER"):
        row = _psql(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, "
            f"rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
            f"WHERE rolname = '{stack_db[role_key]}'"
        )
        assert row == "t|f|f|f|t", row
    assert _psql("SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'") == "1"


def test_init_db_refuses_a_missing_password(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "MLFLOW_DB_PASSWORD": "x",
        "PREFECT_DB_PASSWORD": "y",
    }
    res = subprocess.run(
        ["bash", str(INIT_DB)], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode != 0
    assert "CLINFUSE_DB_PASSWORD is not set" in res.stderr


# --- slow: the servers started with compose.yaml's own arguments ----------------------------


def _request(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.slow
def test_mlflow_basic_auth_server_with_compose_arguments(
    services: dict[str, Any],
    stack_db: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs Flask-WTF (mlflow[auth])")
    from tests.servers import free_port, start_process

    port = free_port()
    pg = "127.0.0.1:5432"
    # compose.yaml's command with only the deployment-specific parts swapped: local
    # PostgreSQL and this test's databases, a local artifact folder (no S3 here), one
    # loopback worker on a free port. --app-name and --allowed-hosts stay as written.
    swap = {
        "postgresql+psycopg2://mlflow@postgres:5432/mlflow": f"postgresql+psycopg2://{stack_db['MLFLOW_DB_USER']}@{pg}/"
        f"{stack_db['MLFLOW_DB_NAME']}",
        "0.0.0.0": "127.0.0.1",
        "5000": str(port),
        "2": "1",
    }
    cmd = [swap.get(_defaults(str(c)), _defaults(str(c))) for c in services["mlflow"]["command"]]
    dest = cmd.index("--artifacts-destination") + 1
    cmd[dest] = str(tmp_path / "artifacts")
    ini = AUTH_INI.read_text().replace(
        "postgresql+psycopg2://mlflow@postgres:5432/mlflow_auth",
        f"postgresql+psycopg2://{stack_db['MLFLOW_DB_USER']}@{pg}/"
        f"{stack_db['MLFLOW_AUTH_DB_NAME']}",
    )
    (tmp_path / "auth.ini").write_text(ini)
    admin_pw = uuid.uuid4().hex * 2
    env = {
        "PGPASSWORD": stack_db["MLFLOW_DB_PASSWORD"],
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_pw,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    base = f"http://127.0.0.1:{port}"
    handle = start_process(
        [sys.executable, "-m", "mlflow", *cmd],
        f"{base}/health",
        env,
        tmp_path / "mlflow.log",
        timeout_s=180,
        base_url=base,
    )
    try:
        # The container healthcheck probes /health without credentials.
        assert _request(f"{base}/health") == 200
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _request(search) == 401
        assert _request(search, _basic("admin", admin_pw)) == 200
        # The worker reaches the server as http://mlflow:5000: that Host must be allowed.
        assert _request(search, {"Host": "mlflow:5000", **_basic("admin", admin_pw)}) == 200
        assert _request(search, {"Host": "evil.example", **_basic("admin", admin_pw)}) == 403

        worker_pw = uuid.uuid4().hex * 2
        script_env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": base,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": admin_pw,
            "CLINFUSE_MLFLOW_USERNAME": "clinfuse-worker",
            "CLINFUSE_MLFLOW_PASSWORD": worker_pw,
        }
        outcomes = []
        for _ in range(2):
            res = subprocess.run(
                [sys.executable, str(USERS_SCRIPT)],
                env=script_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert res.returncode == 0, res.stderr
            assert worker_pw not in res.stdout + res.stderr
            outcomes.append(res.stdout.strip().rsplit(" ", 1)[-1])
        assert outcomes == ["created", "updated"]

        # The worker account can do the worker's job: create an experiment and log a run.
        from mlflow import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "clinfuse-worker")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", worker_pw)
        client = MlflowClient(tracking_uri=base)
        exp = client.create_experiment(f"deploy-check-{uuid.uuid4().hex[:6]}")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "auroc", 0.5)
        assert client.get_run(run.info.run_id).data.metrics["auroc"] == 0.5
        assert _request(search, _basic("clinfuse-worker", "wrong-password")) == 401
    finally:
        handle.stop()


@pytest.mark.slow
def test_prefect_server_on_postgres_with_compose_settings(
    services: dict[str, Any],
    stack_db: dict[str, str],
    tmp_path: Path,
) -> None:
    from tests.servers import free_port, start_process

    port = free_port()
    env_spec = _env(services["prefect-server"])
    url = env_spec["PREFECT_API_DATABASE_CONNECTION_URL"]
    url = VAR_RE.sub(stack_db["PREFECT_DB_PASSWORD"], url)
    url = url.replace("prefect:", f"{stack_db['PREFECT_DB_USER']}:", 1)
    url = url.replace("@postgres:5432/prefect", f"@127.0.0.1:5432/{stack_db['PREFECT_DB_NAME']}")
    auth = f"admin:{uuid.uuid4().hex}"
    env = {
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_ANALYTICS_ENABLED": env_spec["PREFECT_SERVER_ANALYTICS_ENABLED"],
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_UI_ENABLED": "false",
    }
    cmd = [_defaults(str(c)) for c in services["prefect-server"]["command"]]
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    prefect = VENV_BIN / "prefect"
    exe = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
    base = f"http://127.0.0.1:{port}/api"
    handle = start_process(
        [*exe, *cmd], f"{base}/health", env, tmp_path / "prefect.log", timeout_s=180, base_url=base
    )
    try:
        user, _, password = auth.partition(":")
        assert _request(f"{base}/health") == 200  # the compose healthcheck needs no auth
        assert _request(f"{base}/admin/version") == 401
        assert _request(f"{base}/admin/version", _basic(user, password)) == 200
        # Migrations ran as the unprivileged owner role: Prefect's tables live in its DB.
        tables = _psql(
            f"SELECT count(*) FROM pg_tables WHERE tableowner = '{stack_db['PREFECT_DB_USER']}'",
            db=stack_db["PREFECT_DB_NAME"],
        )
        assert int(tables) > 10
    finally:
        handle.stop()
