"""Graph stores: the embedded default (LadybugDB) and Neo4j over Bolt, behind one interface."""

from circuit_atlas.store.base import SCHEMA_VERSION, ReadOnlyViolation, Store, StoreError, WriteReport
from circuit_atlas.store.connect import default_url, open_store

__all__ = ["SCHEMA_VERSION", "ReadOnlyViolation", "Store", "StoreError", "WriteReport", "default_url", "open_store"]
