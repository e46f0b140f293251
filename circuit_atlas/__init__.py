"""circuit-atlas: attribution graphs for a corpus of prompts, in a graph database.

The sub-packages are the project's top-level folders: engine (attribution graphs),
store (graph databases), ingest (corpora and graph files into a store), queries (the
Cypher library) and app (the Streamlit app).
"""

__version__ = "0.1.0"
