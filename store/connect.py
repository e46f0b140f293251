"""Open a store from a URL: `embedded:PATH` | `bolt://…` | `neo4j://…` (credentials from env)."""

from __future__ import annotations

import os

from circuit_atlas.paths import home
from circuit_atlas.store.base import Store, StoreError


def default_url() -> str:
    """`CIRCUIT_ATLAS_STORE`, else the embedded store under `$CIRCUIT_ATLAS_HOME` (~/.circuit-atlas)."""
    env = os.environ.get("CIRCUIT_ATLAS_STORE")
    if env:
        return env
    return f"embedded:{home() / 'store'}"


def open_store(url: str | None = None, *, read_only: bool = False) -> Store:
    """The store a URL names; raises StoreError if it cannot be reached or used."""
    url = url or default_url()
    if url.startswith("embedded:"):
        from circuit_atlas.store.embedded import EmbeddedStore

        return EmbeddedStore(url[len("embedded:"):], read_only=read_only)
    if url.split("://", 1)[0] in ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"):
        try:
            from circuit_atlas.store.bolt import BoltStore
        except ImportError as exc:
            raise StoreError(f"{url}: the Bolt backend is not available ({exc})") from exc
        return BoltStore(url, read_only=read_only)
    raise StoreError(f"unknown store URL {url!r}: use embedded:PATH, bolt://host:port or neo4j://host:port")
