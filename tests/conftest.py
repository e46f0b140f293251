"""Fixtures shared across test folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> dict:
    """`circuit-atlas demo --quick --no-serve` run once per test session on the real demo model,
    in a private CIRCUIT_ATLAS_HOME: its home, root folder, environment and summary. The demo
    test and the browser test on the demo store share it (each run costs minutes on 2 cores)."""
    home = tmp_path_factory.mktemp("quick-demo") / "home"
    env = dict(os.environ, CIRCUIT_ATLAS_HOME=str(home))
    env.pop("CIRCUIT_ATLAS_STORE", None)
    proc = subprocess.run([sys.executable, "-m", "circuit_atlas", "demo", "--quick", "--no-serve"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = home / "demo-quick"
    return {"home": home, "root": root, "env": env, "stdout": proc.stdout, "stderr": proc.stderr,
            "summary": json.loads((root / "summary.json").read_text())}
