"""Fixtures of the ingest tests; helpers live in ingest_helpers.py (importable by name)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"embedded:{tmp_path / 'store'}"
