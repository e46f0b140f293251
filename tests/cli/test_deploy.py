"""docker-compose.yml and the Dockerfile, read statically (no container engine runs here): every
variable a health check or command uses is set in that service; ports on 127.0.0.1 only; images
pinned to a major; depends_on consistent. The health check's shell is run for real with the
environment its container gets, and the credential switch of the Bolt store is checked."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# What a user exports before `docker compose up` (README): every required variable, nothing else.
HOST_ENV = {"NEO4J_PASSWORD": "admin-secret 'quoted'", "NEO4J_READ_PASSWORD": "reader-secret"}

_COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")
_CONTAINER_VAR = re.compile(r"\$\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(text: str, host: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error} from the host; $$ is a $."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        value = host.get(name)
        if op in (":?", "?") and not value:
            raise KeyError(f"{name} is required: {arg}")
        if op in (":-", "-") and not value:
            return arg
        return value or ""

    return _COMPOSE_VAR.sub(one, text).replace("$$", "$")


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _commands(service: dict) -> list[str]:
    """The shell/exec texts a service runs: health check, command, entrypoint."""
    texts = []
    for key in ("command", "entrypoint"):
        value = service.get(key)
        if value:
            texts.append(value if isinstance(value, str) else " ".join(map(str, value)))
    test = (service.get("healthcheck") or {}).get("test")
    if test:
        texts.append(test if isinstance(test, str) else " ".join(map(str, test[1:] if test[0] in ("CMD", "CMD-SHELL") else test)))
    return texts


SERVICE_NAMES = sorted(SERVICES)


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_every_variable_a_command_uses_is_set_in_its_service(name):
    service = SERVICES[name]
    env = _environment(service)
    for text in _commands(service):
        for var in _CONTAINER_VAR.findall(text):  # $$VAR: read by the container's shell
            assert var in env, f"{name}: {text!r} uses ${var}, which the service's environment does not set"
        for m in _COMPOSE_VAR.finditer(text.replace("$$", "")):  # ${VAR}: compose's, must be declared too
            var = m.group(1) or m.group(4)
            assert var in env, f"{name}: {text!r} uses ${{{var}}}, which the service's environment does not set"


def test_the_neo4j_health_check_passes_the_password_the_server_was_given(tmp_path):
    """Run the health check's shell with the container's environment and a stand-in cypher-shell
    that records its arguments: the password it gets is the one in NEO4J_AUTH."""
    service = SERVICES["neo4j"]
    env = {k: interpolate(v, HOST_ENV) for k, v in _environment(service).items()}
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    shell = interpolate(test[1], HOST_ENV)
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "cypher-shell").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (stub / "cypher-shell").chmod(0o755)
    out = tmp_path / "args"
    proc = subprocess.run(["sh", "-c", shell], env={**env, "PATH": f"{stub}:/usr/bin:/bin", "ARGS_OUT": str(out)},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    args = out.read_text().splitlines()
    user, password = env["NEO4J_AUTH"].split("/", 1)
    assert args[args.index("-u") + 1] == user
    assert args[args.index("-p") + 1] == password == HOST_ENV["NEO4J_PASSWORD"]


def test_every_published_port_is_bound_to_localhost():
    published = 0
    for name, service in SERVICES.items():
        for port in service.get("ports") or []:
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} is not bound to 127.0.0.1"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not bound to 127.0.0.1"
    assert published >= 3  # Bolt, the browser and the app


def _pinned(image: str) -> bool:
    """name:TAG whose tag starts with a version number (5, 5-community, 3.11-slim), not latest."""
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    return bool(tag) and re.match(r"\d+", tag) is not None


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_every_compose_image_is_pinned_to_a_major(name):
    service = SERVICES[name]
    image = service.get("image")
    assert image or service.get("build"), f"{name}: neither an image nor a build"
    if image:
        resolved = interpolate(image, HOST_ENV)
        assert _pinned(resolved), f"{name}: image {resolved!r} is not pinned to a major version"


def test_every_dockerfile_base_image_is_pinned_to_a_major():
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, flags=re.M)
    assert bases
    for base in bases:
        assert _pinned(base), f"Dockerfile: FROM {base} is not pinned to a major version"


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_depends_on_is_consistent(name):
    for target, spec in (SERVICES[name].get("depends_on") or {}).items():
        assert target in SERVICES, f"{name} depends on {target}, which is not a service"
        condition = (spec or {}).get("condition", "service_started")
        if condition == "service_healthy":
            assert (SERVICES[target].get("healthcheck") or {}).get("test"), f"{name} waits for {target} to be healthy; it has no health check"
        elif condition == "service_completed_successfully":
            assert SERVICES[target].get("restart", "no") == "no", f"{name} waits for {target} to finish; it restarts"
        else:
            assert condition == "service_started", f"{name}: unknown condition {condition}"


def _app_env(host: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(v, host) for k, v in _environment(SERVICES["app"]).items()}


def test_the_app_connects_as_the_reader_the_init_service_creates():
    users = {k: interpolate(v, HOST_ENV) for k, v in _environment(SERVICES["neo4j-users"]).items()}
    app = _app_env(HOST_ENV)
    assert app["NEO4J_USER"] == users["NEO4J_READ_USER"] != "neo4j"
    assert app["NEO4J_PASSWORD"] == users["NEO4J_READ_PASSWORD"] != HOST_ENV["NEO4J_PASSWORD"]
    assert app["NEO4J_READER_ONLY"] == "1"
    assert app["NEO4J_WRITE_USER"] == users["NEO4J_WRITE_USER"]
    assert SERVICES["app"]["depends_on"]["neo4j-users"]["condition"] == "service_completed_successfully"


def test_without_a_writer_password_the_app_has_no_writer():
    """NEO4J_WRITE_PASSWORD unset: the app gets an empty one, which store/bolt.py treats as no
    writer account (so NEO4J_READER_ONLY refuses writes with a message)."""
    assert _app_env(HOST_ENV)["NEO4J_WRITE_PASSWORD"] == ""
    with_writer = _app_env({**HOST_ENV, "NEO4J_WRITE_PASSWORD": "writer-secret"})
    assert with_writer["NEO4J_WRITE_PASSWORD"] == "writer-secret"


def test_the_init_script_needs_only_variables_its_service_sets():
    command = SERVICES["neo4j-users"]["command"]
    script = ROOT / command[-1]
    assert script.is_file(), f"{script} (run by neo4j-users) is missing"
    env = _environment(SERVICES["neo4j-users"])
    for var in set(re.findall(r'_env\("([A-Z_]+)"', script.read_text())):
        assert var in env, f"{script.name} needs {var}, which neo4j-users does not set"


def test_the_app_command_serves_on_every_address_of_its_container():
    """Inside a container, a server on localhost is unreachable through the published port."""
    dockerfile_cmd = json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE, re.M).group(1))
    for args in (SERVICES["app"]["command"], dockerfile_cmd):
        assert args[:2] == ["circuit-atlas", "app"]
        assert args[args.index("--host") + 1] == "0.0.0.0"
        port = args[args.index("--port") + 1]
        assert f"EXPOSE {port}" in DOCKERFILE
        assert any(str(p).endswith(f":{port}") for p in SERVICES["app"]["ports"])


# The credential switch in the Bolt store (store/bolt.py): a writer open never uses the reader.

def test_a_writer_open_is_refused_as_the_reader_with_a_clear_message(monkeypatch):
    from circuit_atlas.store import StoreError, open_store

    monkeypatch.setenv("NEO4J_READER_ONLY", "1")
    monkeypatch.setenv("NEO4J_USER", "circuit_reader")
    monkeypatch.delenv("NEO4J_WRITE_USER", raising=False)
    monkeypatch.setenv("NEO4J_WRITE_PASSWORD", "")
    with pytest.raises(StoreError) as err:
        open_store("bolt://127.0.0.1:1")  # refused before any connection is tried
    text = str(err.value)
    assert "writes are disabled" in text and "NEO4J_WRITE_USER" in text and "\n" not in text


@pytest.mark.bolt
def test_a_writer_open_uses_the_writer_account(monkeypatch):
    """Against the real ArcadeDB Bolt server: reads go as NEO4J_USER; a writer open goes as
    NEO4J_WRITE_USER (a wrong one is refused by the server, naming that account)."""
    from circuit_atlas.store import StoreError, open_store
    from circuit_atlas.store.arcadedb_server import arcadedb_server

    with arcadedb_server() as server:
        monkeypatch.setenv("NEO4J_USER", server.user)
        monkeypatch.setenv("NEO4J_PASSWORD", server.password)
        monkeypatch.setenv("NEO4J_DATABASE", server.default_database)
        monkeypatch.setenv("NEO4J_READER_ONLY", "1")
        monkeypatch.setenv("NEO4J_WRITE_USER", "no_such_writer")
        monkeypatch.setenv("NEO4J_WRITE_PASSWORD", "wrong-password")
        with open_store(server.url, read_only=True) as store:
            assert store.read("RETURN 1 AS one")["one"].tolist() == [1]
        with pytest.raises(StoreError) as err:
            open_store(server.url)
        assert "no_such_writer" in str(err.value)
        monkeypatch.setenv("NEO4J_WRITE_USER", server.user)
        monkeypatch.setenv("NEO4J_WRITE_PASSWORD", server.password)
        with open_store(server.url) as store:
            assert store.read_only is False
