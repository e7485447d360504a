"""What each index store costs, on one generated corpus: build, one-document update,
hybrid search latency and the memory of a process serving it.

    .venv/bin/python -m bench.stores [--docs 20000] [--stores faiss,milvus]

Vectors come from a deterministic hashed-words embedder (tests/fakes.py, 384 dimensions):
embedding cost is the model's, the same for every store, and would make 20,000 chunks take
an hour on this machine; everything after it (chunking, writing, BM25, search) is the real
code path. For each store:

1. a full build (nothing reused): seconds, chunks/s, bytes on disk;
2. an update after one changed document: seconds, bytes written (files created or grown),
   and both as a share of the full build;
3. p50/p95 of a hybrid ``Searcher.search`` (embedding excluded), 200 questions;
4. resident memory (VmRSS) of a fresh process that loads the generation and answers one
   question, as the API process would; for Milvus also the RSS of the database process.

Milvus runs as Milvus Lite's own gRPC server (``milvus-lite server``, as a deployment with
several API processes would): an embedded ``.db`` admits one process, so the serving
process could not open it beside the builder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.milvus_bm25 import lite_server
from qa.assemble import spec_from_settings, store_from_settings
from qa.builder import build_index
from qa.settings import Settings
from tests.fakes import FakeEmbedder

TOPICS = [
    "river", "harbour", "glacier", "orchard", "railway", "library", "volcano", "market",
    "bridge", "forest", "satellite", "vineyard", "monastery", "lighthouse", "canal", "mine",
]  # fmt: skip
VERBS = ["supplies", "protects", "connects", "feeds", "shelters", "drains", "lights", "crosses"]


def make_corpus(root: Path, n: int, seed: int = 11) -> None:
    """``n`` one-chunk documents of three sentences, seeded."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        topic = rng.choice(TOPICS)
        (root / f"doc-{i:06d}.md").write_text(
            f"# {topic.title()} {i}\n\nThe {topic} {rng.choice(VERBS)} the town {i % 97}. "
            f"It was built in {1700 + rng.randrange(300)}. Visitors say the {topic} "
            f"{rng.choice(VERBS)} the valley in winter.\n",
            "utf-8",
        )
    # a corpus written a while before the build, as in use: a file written within 2 s of
    # a build's scan is read again by the next update (git's racy-clean rule, qa.loaders)
    past = time.time() - 600
    for path in root.iterdir():
        os.utime(path, (past, past))


def disk_files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def written_bytes(before: dict[str, int], after: dict[str, int]) -> int:
    """Bytes of files created, plus growth of files that grew (an upper bound of what a
    write cost for files rewritten in place is their size: counted whole when changed)."""
    total = 0
    for path, size in after.items():
        old = before.get(path)
        if old is None or size != old:
            total += size
    return total


RSS_SCRIPT = """
import json, os, sys
from qa.assemble import store_from_settings, spec_from_settings
from qa.search import Searcher
from qa.settings import Settings
from tests.fakes import FakeEmbedder
settings = Settings()
snapshot = store_from_settings(settings).load(spec_from_settings(settings))
vector = FakeEmbedder(384).embed(["what does the harbour supply"])[0]
Searcher(snapshot).search("what does the harbour supply", vector, 5)
rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]
print(json.dumps({"rss_mb": round(int(rss) / 1024, 1)}))
"""


def env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None and not isinstance(value, list | dict):
            env[f"QA_{name.upper()}"] = str(value)
    return env


def process_rss_mb(pid: int) -> float:
    """VmRSS of process ``pid`` and its children, in MB (Linux /proc)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                pids.extend(int(c) for c in children)
    return round(total / 1024, 1)


def measure(store_name: str, docs: int, root: Path) -> dict[str, Any]:
    if store_name != "milvus":
        return measure_with(store_name, docs, root, {})
    data_dir = root / "milvus"
    data_dir.mkdir(parents=True, exist_ok=True)
    with lite_server(data_dir) as (uri, server_pid):
        result = measure_with(store_name, docs, root, {"milvus_uri": uri})
        result["milvus_server_rss_mb"] = process_rss_mb(server_pid)
    return result


def measure_with(store_name: str, docs: int, root: Path, extra: dict[str, Any]) -> dict[str, Any]:
    corpus = root / "corpus"
    if not corpus.exists():
        make_corpus(corpus, docs)
    if store_name == "milvus":
        extra = {"vector_store": "milvus", **extra}
    settings = Settings(
        corpus_dir=corpus,
        index_dir=root / f"index-{store_name}",
        embedding_model="fake-embedder",
        **extra,
    )
    data_dir = root / "milvus" if store_name == "milvus" else Path(settings.index_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = store_from_settings(settings)
    spec = spec_from_settings(settings)
    embedder = FakeEmbedder(384)

    began = time.perf_counter()
    full = build_index(corpus, store, embedder, spec, reuse=False)
    full_s = time.perf_counter() - began
    full_files = disk_files(data_dir)
    full_bytes = sum(full_files.values())

    doc = corpus / f"doc-{docs // 2:06d}.md"
    doc.write_text(doc.read_text("utf-8") + "\nA new sentence about the harbour.\n", "utf-8")
    began = time.perf_counter()
    build_index(corpus, store, embedder, spec, skip_if_unchanged=True)
    one_s = time.perf_counter() - began
    one_bytes = written_bytes(full_files, disk_files(data_dir))
    doc.write_text(doc.read_text("utf-8").replace("\nA new sentence about the harbour.\n", ""))

    from qa.search import Searcher

    snapshot = store.load(spec)
    searcher = Searcher(snapshot)
    rng = random.Random(5)
    questions = [
        f"what does the {rng.choice(TOPICS)} {rng.choice(VERBS)} in {i % 97}" for i in range(200)
    ]
    vectors = embedder.embed(questions)
    latencies = []
    for question, vector in zip(questions, vectors, strict=True):
        t0 = time.perf_counter()
        searcher.search(question, vector, 5)
        latencies.append((time.perf_counter() - t0) * 1000)
    latencies.sort()
    proc = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT],
        env=env_for(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        rss: float | str = json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]
    else:
        rss = "not measured: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
    return {
        "store": store_name,
        "documents": full.documents,
        "chunks": full.chunks,
        "build_seconds": round(full_s, 1),
        "build_chunks_per_second": round(full.chunks / full_s, 1),
        "bytes_on_disk": full_bytes,
        "update_one_document_seconds": round(one_s, 2),
        "update_seconds_share_of_build": round(one_s / full_s, 4),
        "update_bytes_written": one_bytes,
        "update_bytes_share_of_build": round(one_bytes / full_bytes, 4),
        "hybrid_search_p50_ms": round(statistics.median(latencies), 2),
        "hybrid_search_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "serving_process_rss_mb": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--stores", default="faiss")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stores.split(","):
            print(json.dumps(measure(name, args.docs, Path(tmp)), indent=2), flush=True)


if __name__ == "__main__":
    main()
