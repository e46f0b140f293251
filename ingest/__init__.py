"""From corpora and graph files to the store: ingest, imports, exports, feature contexts."""
