# circuit-atlas app image (CPU torch); docker-compose.yml wires it to Neo4j as a reader account.
FROM python:3.11-slim
WORKDIR /opt/circuit-atlas
COPY . .
# The torch the suite runs on (as `make install`), from the CPU index; then the package with its
# bounded dependencies (pyproject.toml).
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir . \
 && useradd --create-home --uid 10001 atlas
USER atlas
EXPOSE 8501
# --host 0.0.0.0: inside a container, localhost is unreachable from the published port (the
# command line's address wins over STREAMLIT_SERVER_ADDRESS). Compose publishes it on 127.0.0.1.
CMD ["circuit-atlas", "app", "--host", "0.0.0.0", "--port", "8501"]
