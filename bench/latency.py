"""Latency of /v1/ask over HTTP against a running server, and build throughput.

    .venv/bin/python -m bench.latency [--requests 300] [--url http://127.0.0.1:8000]

Without --url it starts `qa serve` on a copy of the default corpus on a free port. Requests
are sent one at a time over a keep-alive connection, cycling through the labelled questions,
after a warm-up. Build throughput is measured with the model already loaded: a full build
of the default corpus, and of the first 1,000 passages of msmarco-5k when it is present.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.questions import read_jsonl
from qa.assemble import embedder_from_settings, spec_from_settings
from qa.builder import build_index
from qa.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MSMARCO = ROOT.parent / "shared" / "benchmarks" / "msmarco-5k" / "corpus.jsonl"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_http(url: str, questions: list[str], requests: int, warmup: int) -> dict[str, Any]:
    client_ms: list[float] = []
    server_ms: dict[str, list[float]] = {"embed": [], "search": [], "total": []}
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(warmup):
            client.post("/v1/ask", json={"question": questions[i % len(questions)]})
        for i in range(requests):
            began = time.perf_counter()
            resp = client.post("/v1/ask", json={"question": questions[i % len(questions)]})
            client_ms.append((time.perf_counter() - began) * 1000)
            resp.raise_for_status()
            for key, value in resp.json()["timings_ms"].items():
                server_ms[key].append(value)
    return {
        "requests": requests,
        "p50_ms": round(statistics.median(client_ms), 2),
        "p95_ms": round(percentile(client_ms, 0.95), 2),
        "mean_ms": round(statistics.fmean(client_ms), 2),
        "server_p50_ms": {k: round(statistics.median(v), 2) for k, v in server_ms.items()},
    }


def measure_build(corpus: Path, settings: Settings) -> dict[str, Any]:
    embedder = embedder_from_settings(settings)
    embedder.embed(["warm up"])
    with tempfile.TemporaryDirectory() as tmp:
        report = build_index(corpus, Path(tmp), embedder, spec_from_settings(settings), reuse=False)
    return {
        "documents": report.documents,
        "chunks": report.chunks,
        "sentences": report.sentences,
        "seconds": round(report.seconds, 2),
        "chunks_per_second": round(report.chunks / report.seconds, 1),
        "texts_per_second": round((report.chunks + report.sentences) / report.seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()

    questions = [q["question"] for q in read_jsonl(ROOT / "eval" / "nato" / "questions.jsonl")]
    results: dict[str, Any] = {}
    if args.url:
        results["http"] = measure_http(args.url, questions, args.requests, args.warmup)
    else:
        from tests.e2e.conftest import qa_env, start_server, stop

        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "corpus"
            shutil.copytree(ROOT / "corpus", corpus)
            url, proc = start_server(qa_env(corpus, Path(tmp) / "index"))
            try:
                results["http"] = measure_http(url, questions, args.requests, args.warmup)
            finally:
                stop(proc)
    if not args.skip_build:
        settings = Settings()
        results["build_default_corpus"] = measure_build(ROOT / "corpus", settings)
        if MSMARCO.exists():
            with tempfile.TemporaryDirectory() as tmp:
                lines = MSMARCO.read_text("utf-8").splitlines()[:1000]
                (Path(tmp) / "msmarco-1k.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
                results["build_msmarco_1k"] = measure_build(Path(tmp), settings)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
