"""Commands of circuit_atlas.app (registered on the main CLI by circuit_atlas.cli):
`circuit-atlas app` serves the Streamlit app over a store."""

from __future__ import annotations

import os
import subprocess
import sys
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


def serve_app(store_url: str | None = None, port: int = 8501, host: str = "localhost", headless: bool = True) -> None:
    """Serve the app on ``host:port`` over ``store_url`` (default: what open_store(None) picks)
    until interrupted. The store URL reaches the app as CIRCUIT_ATLAS_STORE."""
    from circuit_atlas.store import default_url

    env = dict(os.environ, CIRCUIT_ATLAS_STORE=store_url or default_url())
    typer.echo(f"circuit-atlas app on http://{host}:{port} (store {env['CIRCUIT_ATLAS_STORE']}); Ctrl+C stops it", err=True)
    proc = subprocess.Popen(streamlit_command(port, host, headless), env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this sub-package's commands to the main CLI."""

    @app.command("app")
    def app_command(
        store_url: Optional[str] = typer.Option(None, "--store", help="Store URL (embedded:PATH | bolt://... | neo4j://...); default CIRCUIT_ATLAS_STORE or the embedded default."),
        port: int = typer.Option(8501, "--port", help="Port to serve on."),
        host: str = typer.Option("localhost", "--host", help="Address to bind (0.0.0.0 to serve other machines)."),
        headless: bool = typer.Option(True, "--headless/--no-headless", help="Do not (or do) open a browser."),
    ) -> None:
        """Serve the Streamlit app (overview, prompt graphs, features, circuit search, compare groups, Cypher console, intervene)."""
        serve_app(store_url=store_url, port=port, host=host, headless=headless)
