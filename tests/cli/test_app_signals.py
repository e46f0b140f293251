"""`circuit-atlas app` stops its server on SIGTERM as it does on Ctrl+C: the whole process group
(the command and its `streamlit run` child) is gone and the port is free again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="streamlit is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; empty where there is none)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _serve(store: Path, port: int, log: Path) -> subprocess.Popen:
    """The command in a new session (its own process group), output to a file: a pipe would block
    the test's read for as long as an orphaned server holds its end."""
    env = dict(os.environ, CIRCUIT_ATLAS_HOME=str(store.parent / "home"))
    env.pop("CIRCUIT_ATLAS_STORE", None)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "circuit_atlas", "app", "--store", f"embedded:{store}", "--port", str(port),
             "--host", "127.0.0.1", "--headless"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until_served(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            out = log.read_text(errors="replace")
            pytest.fail(f"the app did not come up on port {port}: {out[-2000:]}")
        time.sleep(0.3)


def _wait_gone(pgid: int, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _group_alive(pgid) and _port_is_free(port):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_app_stops_its_server_when_the_command_is_stopped(tmp_path, how):
    """SIGTERM: the command stops the server as on Ctrl+C. SIGKILL (which no handler sees): the
    server is told by the kernel that its parent died, and stops too."""
    port = _free_port()
    log = tmp_path / "app.log"
    proc = _serve(tmp_path / "store", port, log)
    try:
        _wait_until_served(proc, port, log)
        servers = _children(proc.pid)
        assert servers, "the app command has no server child"
        os.kill(proc.pid, getattr(signal, how))  # the command alone, not its group
        proc.wait(timeout=30)
        gone = _wait_gone(proc.pid, port, seconds=20)
        out = log.read_text(errors="replace")
        assert gone, f"after {how}, processes of the group or the port {port} remain: {out[-1500:]}"
        assert all(not Path(f"/proc/{pid}").exists() for pid in servers)
        assert "Traceback" not in out
        if how == "SIGTERM":
            assert proc.returncode == 0, out
            assert "stopped (SIGTERM)" in out
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
