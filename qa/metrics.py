"""Prometheus metrics of the core: stage latencies, updates, builds, reloads.

The metrics live in prometheus-client's default registry (one per process); the HTTP
layer serves them at ``/metrics`` beside its own request metrics and the index gauges.
Names follow Prometheus conventions: seconds, ``_total`` for counters.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGES = ("embed", "search", "rerank", "synthesis")

# Question answering is milliseconds on a CPU; a language model can take many seconds.
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

STAGE_SECONDS = Histogram(
    "qa_stage_seconds",
    "Time spent in one stage of answering a question (embed, search, rerank, synthesis).",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
UPDATE_SECONDS = Histogram(
    "qa_update_seconds",
    "Duration of index updates run by this process (succeeded or failed).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
UPDATES = Counter("qa_updates_total", "Index updates run by this process, by outcome.", ["outcome"])
UPDATE_FAILURES = Counter("qa_update_failures_total", "Index updates that failed.")
BUILD_CHUNKS = Counter(
    "qa_build_chunks_total", "Chunks written by builds and updates run by this process."
)
BUILD_CHUNKS_PER_SECOND = Gauge(
    "qa_build_chunks_per_second",
    "Throughput of the last build or update that wrote a generation: chunks per second.",
)
RELOAD_FAILURES = Counter(
    "qa_reload_failures_total",
    "New index generations found on disk that could not be loaded (the old one kept serving).",
)

for _stage in STAGES:  # every stage shows up (at 0) before its first observation
    STAGE_SECONDS.labels(stage=_stage)
for _outcome in ("succeeded", "failed"):
    UPDATES.labels(outcome=_outcome)


def observe_stage(stage: str, seconds: float) -> None:
    """Record ``seconds`` spent in ``stage`` (one of STAGES)."""
    STAGE_SECONDS.labels(stage=stage).observe(seconds)


def observe_update(seconds: float, *, failed: bool, chunks: int = 0, wrote: bool = False) -> None:
    """Record one update: its duration, outcome and, when it wrote a generation, throughput."""
    UPDATE_SECONDS.observe(seconds)
    UPDATES.labels(outcome="failed" if failed else "succeeded").inc()
    if failed:
        UPDATE_FAILURES.inc()
    elif wrote:
        BUILD_CHUNKS.inc(chunks)
        if seconds > 0:
            BUILD_CHUNKS_PER_SECOND.set(chunks / seconds)


__all__ = [
    "RELOAD_FAILURES",
    "STAGES",
    "STAGE_SECONDS",
    "observe_stage",
    "observe_update",
]
