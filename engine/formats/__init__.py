"""Graph file formats that engine and ingest both use: the graph folder (meta.json + Parquet),
Neuronpedia JSON, circuit-tracer's .pt."""
