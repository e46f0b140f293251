# circuit-atlas app image (CPU torch); docker-compose.yml wires it to Neo4j.
FROM python:3.11-slim
WORKDIR /opt/circuit-atlas
COPY . .
RUN pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir .
# Streamlit reads its address and port from the environment.
ENV STREAMLIT_SERVER_ADDRESS=0.0.0.0 STREAMLIT_SERVER_PORT=8501 STREAMLIT_SERVER_HEADLESS=true
EXPOSE 8501
CMD ["circuit-atlas", "app"]
