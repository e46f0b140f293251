"""circuit-tracer 0.5.0 in its own cached virtual environment, for the benchmark and the parity tests.

circuit-tracer pins transformers<=4.57.3 (we run transformers 5), so it cannot share our
environment: it gets a venv of its own under ~/.cache/circuit-atlas/, made once and reused.
torch is pinned to the exact version whose CPU wheel lies on this machine's disk, first and
again beside circuit-tracer, so pip never swaps it for a multi-GB CUDA build. One module so the
bench (``bench/attribution.py``) and the tests (``tests/parity/conftest.py``) use the same venv.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

CT_VERSION = "0.5.0"
TORCH_PIN = "torch==2.13.0"
# circuit-tracer 0.5.0 on PyPI admits nnsight>=0.6.0, but its nnsight backend imports modules that
# nnsight 0.7+ dropped; its own repository pins 0.6.1
NNSIGHT_PIN = "nnsight==0.6.1"


def venv_dir() -> Path:
    """``$CIRCUIT_ATLAS_CT_VENV`` (or the older ``$CIRCUIT_ATLAS_BENCH_VENV``), else the cache."""
    env = os.environ.get("CIRCUIT_ATLAS_CT_VENV") or os.environ.get("CIRCUIT_ATLAS_BENCH_VENV")
    return Path(env) if env else Path.home() / ".cache" / "circuit-atlas" / f"circuit-tracer-{CT_VERSION}"


def venv_python(root: Path | None = None) -> Path:
    return (root or venv_dir()) / "bin" / "python"


def is_ready(python: Path) -> bool:
    """The venv imports circuit-tracer (of our version) and its nnsight backend."""
    if not python.exists():
        return False
    check = (
        "import importlib.metadata as m, circuit_tracer, nnsight; "
        "from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel; "
        f"assert m.version('circuit-tracer') == '{CT_VERSION}'"
    )
    return subprocess.run([str(python), "-c", check], capture_output=True, timeout=300).returncode == 0


def ensure_venv(*, quiet: bool = False) -> Path:
    """The venv's python, creating the venv first if needed (minutes, once). A file lock keeps
    two processes (pytest workers, the bench) from building it at once. Raises
    ``subprocess.CalledProcessError``/``OSError`` when it cannot be made (no registry, say)."""
    root = venv_dir()
    python = venv_python(root)
    if is_ready(python):
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(python):  # made by the process we waited for
            return python
        print(f"installing circuit-tracer {CT_VERSION} into {root} (once) ...", file=sys.stderr, flush=True)
        out = subprocess.DEVNULL if quiet else None
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, stdout=out)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, TORCH_PIN], check=True, stdout=out)
        subprocess.run([*pip, f"circuit-tracer=={CT_VERSION}", NNSIGHT_PIN, TORCH_PIN], check=True, stdout=out)
        if not is_ready(python):
            raise OSError(f"{root}: circuit-tracer {CT_VERSION} installed but does not import")
    return python


if __name__ == "__main__":  # `python bench/ct_env.py` prints the venv's python, making it if needed
    print(ensure_venv())
