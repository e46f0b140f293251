"""Commands of circuit_atlas.app (registered on the main CLI by circuit_atlas.cli):
`circuit-atlas app` serves the Streamlit app over a store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

ENTRY = Path(__file__).resolve().parent / "pages" / "streamlit_app.py"


def streamlit_command(port: int = 8501, host: str = "localhost", headless: bool = True) -> list[str]:
    """The `streamlit run` command line for the app's entry file."""
    return [sys.executable, "-m", "streamlit", "run", str(ENTRY),
            "--server.port", str(port), "--server.address", host,
            "--server.headless", "true" if headless else "false",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]


class _Stop(Exception):
    """Raised in the main thread by a SIGTERM/SIGHUP handler, to stop the server as Ctrl+C does."""


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when this process dies, even by SIGKILL,
    so a killed `circuit-atlas app` never leaves `streamlit run` serving and holding the store."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the signal handlers below still stop it on SIGTERM/SIGHUP/Ctrl+C


def _stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server and wait for it (kill it after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def app_environment(store_url: str | None = None, model: str | None = None, transcoders: str | None = None) -> dict[str, str]:
    """The server's environment: CIRCUIT_ATLAS_STORE, and CIRCUIT_ATLAS_MODEL /
    CIRCUIT_ATLAS_TRANSCODERS when given (the pages that run the model read them)."""
    from circuit_atlas.store import default_url

    env = dict(os.environ, CIRCUIT_ATLAS_STORE=store_url or default_url())
    if model:
        env["CIRCUIT_ATLAS_MODEL"] = model
    if transcoders:
        env["CIRCUIT_ATLAS_TRANSCODERS"] = transcoders
    return env


def serve_app(store_url: str | None = None, port: int = 8501, host: str = "localhost", headless: bool = True,
              model: str | None = None, transcoders: str | None = None) -> None:
    """Serve the app on ``host:port`` over ``store_url`` (default: what open_store(None) picks)
    until interrupted (Ctrl+C, SIGTERM or SIGHUP: each stops the server, then returns). The store
    URL reaches the app as CIRCUIT_ATLAS_STORE, the model and transcoders (for Intervene, head
    loadings and validation) as CIRCUIT_ATLAS_MODEL / CIRCUIT_ATLAS_TRANSCODERS."""
    if bool(model) != bool(transcoders):
        raise typer.BadParameter("give --model and --transcoders together (the pages that run the model need both)")
    env = app_environment(store_url, model, transcoders)
    typer.echo(f"circuit-atlas app on http://{host}:{port} (store {env['CIRCUIT_ATLAS_STORE']}); Ctrl+C stops it", err=True)

    def stop(signum: int, frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    # Signal handlers can only be set from the main thread; elsewhere, Ctrl+C is what stops it.
    in_main = threading.current_thread() is threading.main_thread()
    stops = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None and in_main]
    previous = {s: signal.signal(s, stop) for s in stops}  # before the start: no window without them
    try:
        proc = subprocess.Popen(streamlit_command(port, host, headless), env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            code = proc.wait()
        except (KeyboardInterrupt, _Stop) as exc:
            for s in stops:  # a second signal must not interrupt the shutdown
                signal.signal(s, signal.SIG_IGN)
            _stop_server(proc)
            typer.echo(f"circuit-atlas app stopped ({exc or 'Ctrl+C'})", err=True)
            return
    except _Stop:  # the signal came before the server had started: nothing to stop
        return
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this sub-package's commands to the main CLI."""

    @app.command("app")
    def app_command(
        store_url: Optional[str] = typer.Option(None, "--store", help="Store URL (embedded:PATH | bolt://... | neo4j://...); default CIRCUIT_ATLAS_STORE or the embedded default."),
        port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to serve on."),
        host: str = typer.Option("localhost", "--host", help="Address to bind (0.0.0.0 to serve other machines)."),
        headless: bool = typer.Option(True, "--headless/--no-headless", help="Do not (or do) open a browser."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Model for Intervene, head loadings and validation: 'demo', a model directory, a .gguf file or a hub id (default: $CIRCUIT_ATLAS_MODEL); loaded on first use."),
        transcoders: Optional[str] = typer.Option(None, "--transcoders", "-t", help="Its transcoders (a directory in circuit-tracer format, GemmaScope .npz or a hub id; default: $CIRCUIT_ATLAS_TRANSCODERS)."),
    ) -> None:
        """Serve the Streamlit app (overview, prompt graphs, features, circuit search, compare groups, Cypher console, intervene)."""
        serve_app(store_url=store_url, port=port, host=host, headless=headless, model=model, transcoders=transcoders)
