"""Parity with circuit-tracer 0.5.0: the session's circuit-tracer venv (made on first use).

Every test here carries the ``parity`` marker (on by default). ``ct_python`` is the path of
the venv's python; where the venv cannot be made (no package registry, say) the tests that
need it skip with the reason.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_ct_env():
    """bench/ct_env.py (bench/ is scripts, not a package): the one venv maker."""
    spec = importlib.util.spec_from_file_location("circuit_atlas_bench_ct_env", ROOT / "bench" / "ct_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


ct_env = _load_ct_env()


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.parity)


@pytest.fixture(scope="session")
def ct_python() -> Path:
    """Path of the python of circuit-tracer 0.5.0's venv; skips when it cannot be made."""
    try:
        return ct_env.ensure_venv(quiet=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.skip(f"circuit-tracer {ct_env.CT_VERSION} venv could not be made at {ct_env.venv_dir()}: {exc}")
