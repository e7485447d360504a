"""Observability of the server: request ids in every log line, JSON logs, Prometheus metrics.

- ``request_id`` is a context variable set by the middleware for each request; the log
  filter copies it into every record (``-`` outside a request, e.g. the reload thread).
- ``configure_logging`` installs one handler on the root logger: text or one JSON object
  per line (``QA_LOG_FORMAT=json``), each with the request id.
- ``metrics_response`` renders prometheus-client's default registry (the core's stage,
  update and build metrics and the request metrics below) plus the index gauges of the
  app's engine (generation in service, documents, chunks), read at scrape time.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from qa.engine import Engine

request_id: ContextVar[str] = ContextVar("qa_request_id", default="-")

HTTP_REQUESTS = Counter(
    "qa_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "qa_http_request_seconds",
    "Time from a request's arrival to the end of its response, by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the id of the request being served, or ``-``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (and exc_info)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", request_id.get()),
            "message": record.getMessage(),
        }
        for key in ("method", "path", "route", "status", "duration_ms", "client"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def configure_logging(log_format: str, level: int = logging.INFO) -> logging.Handler:
    """Route every logger (uvicorn's included) through one stderr handler that writes
    the request id; ``log_format`` is ``text`` or ``json``. Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler


class IndexCollector(Collector):
    """The index in service, read from the engine at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily("qa_index_ready", "1 when an index generation is in service.")
        ready.add_metric([], 1.0 if self.engine.ready else 0.0)
        yield ready
        if not self.engine.ready:
            return
        data = self.engine.data
        for name, doc, value in (
            ("qa_index_generation", "The index generation in service.", data.generation),
            (
                "qa_index_documents",
                "Documents in the generation in service.",
                len(data.documents()),
            ),
            ("qa_index_chunks", "Chunks in the generation in service.", len(data)),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            yield gauge


def index_registry(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IndexCollector(engine))
    return registry


def metrics_text(app_registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of the process and of this app's index."""
    return generate_latest(REGISTRY) + generate_latest(app_registry)


__all__ = [
    "CONTENT_TYPE_LATEST",
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "JsonFormatter",
    "RequestIdFilter",
    "configure_logging",
    "index_registry",
    "metrics_text",
    "request_id",
]
