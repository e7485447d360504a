"""Keyword search in Milvus (its BM25 function) against bm25s (qa.lexical.BM25Index).

    .venv/bin/python -m bench.milvus_bm25 [--set ../shared/benchmarks/msmarco-5k]
        [--uri http://127.0.0.1:19530 | --server] [--passes 3]

The corpus is read and chunked as the pipeline does (qa.loaders, qa.chunker with the bundled
model's tokenizer and the default chunk settings); both retrievers index the same chunk
texts. BM25 only: a query's documents are ranked by their best chunk (300 chunks deep, 100
documents kept, as ``qa eval`` does), nDCG@10 / Recall@100 / MRR@10 by pytrec_eval.
Milvus is written through qa.milvus_store (one generation, published) and searched with
``MilvusSnapshot.lexical`` in two forms of the text Milvus's analyzer sees:

- ``qa``:  the project's BM25 tokens (stopwords removed, Snowball stems) joined by spaces;
- ``raw``: the chunk text, Milvus Lite's standard analyzer alone (``\\w+``, lower case).

Without --uri the store is Milvus Lite embedded in this process (a temporary ``.db``); with
--server, Milvus Lite's gRPC server started here as a separate process
(``milvus-lite server``), as several API processes would share it. The chunk vector field
holds random 8-dimensional unit vectors (dense search is not measured).
Latency: one warm-up pass, then ``--passes`` passes over the queries, one query at a time;
bm25s is timed from the query string to the top 300 chunk rows, Milvus from the query
string to the (ids, scores) it returns; for Milvus also at the serving depth
(QA_CANDIDATES chunks), since its cost grows with the number of hits returned.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qa.chunker import Chunker
from qa.documents import Chunk, Document
from qa.embedder import SentenceTransformerEmbedder
from qa.evaluation import load_dataset, trec_metrics
from qa.lexical import BM25Index
from qa.loaders import load_file
from qa.milvus_store import DocumentWrite, MilvusIndex, chunk_id
from qa.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SET = ROOT.parent / "shared" / "benchmarks" / "msmarco-5k"
DEPTH_CHUNKS = 300
DEPTH_DOCS = 100
SERVING_K = Settings().candidates
DIM = 8

Search = Callable[[str], list[str]]  # query -> doc ids of the ranked chunks, best first


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def chunk_corpus(path: Path) -> tuple[list[Document], list[list[Chunk]]]:
    settings = Settings()
    tokenizer = SentenceTransformerEmbedder(settings.embedding_model)
    chunker = Chunker(tokenizer.count_tokens, settings.chunk_tokens, settings.chunk_overlap_tokens)
    documents = list(load_file(path / "corpus.jsonl", "corpus.jsonl"))
    return documents, [chunker.chunk(d).chunks for d in documents]


def measure(
    name: str, search: Search, queries: dict[str, str], qrels: Any, passes: int
) -> dict[str, Any]:
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():  # the warm-up pass gives the ranking
        docs: list[str] = []
        for doc_id in search(text):
            short = doc_id.split("#", 1)[-1]
            if short not in docs:
                docs.append(short)
            if len(docs) >= DEPTH_DOCS:
                break
        run[qid] = {d: float(len(docs) - i) for i, d in enumerate(docs)}
    latencies: list[float] = []
    for _ in range(passes):
        for text in queries.values():
            began = time.perf_counter()
            search(text)
            latencies.append((time.perf_counter() - began) * 1000)
    metrics = trec_metrics(qrels, run)
    return {
        "name": name,
        **metrics,
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "n": len(latencies),
    }


@contextlib.contextmanager
def lite_server(data_dir: Path) -> Iterator[tuple[str, int]]:
    """``milvus-lite server`` on a free port; yields its URI and process id once the port
    accepts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("milvus-lite")
    cmd = [str(exe), "server", "--data-dir", str(data_dir), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--host", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"milvus-lite server exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("milvus-lite server did not open its port") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", type=Path, default=DEFAULT_SET)
    parser.add_argument("--uri", default="", help="a Milvus server; default: embedded Lite")
    parser.add_argument("--server", action="store_true", help="start milvus-lite server")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("grpc").setLevel(logging.CRITICAL)

    dataset = load_dataset(args.set)
    began = time.perf_counter()
    documents, chunked = chunk_corpus(args.set)
    flat = [c for chunks in chunked for c in chunks]
    print(
        f"{args.set.name}: {len(documents)} documents, {len(flat)} chunks, "
        f"{len(dataset.queries)} queries (read and chunked in {time.perf_counter() - began:.1f} s)"
    )

    results = []
    began = time.perf_counter()
    bm25 = BM25Index.build([c.text for c in flat])
    print(f"bm25s index: {time.perf_counter() - began:.1f} s")
    doc_of_row = [c.doc_id for c in flat]

    def bm25s_search(query: str) -> list[str]:
        scores = bm25.scores(query)
        k = min(DEPTH_CHUNKS, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [doc_of_row[i] for i in top if scores[i] > 0]

    results.append(
        measure("bm25s (qa.lexical)", bm25s_search, dataset.queries, dataset.qrels, args.passes)
    )

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        uri = args.uri or str(Path(tmp) / "bench.db")
        where = "Milvus" if args.uri else "Milvus Lite"
        if args.server:
            uri, _ = stack.enter_context(lite_server(Path(tmp) / "server"))
            where = "Milvus Lite server"
        for form in ("qa", "raw"):
            store = MilvusIndex(uri, dimension=DIM, prefix=f"bench_{form}", lexical_form=form)
            for name in (
                store.chunks_name,
                store.sentences_name,
                store.documents_name,
                store.meta_name,
            ):
                if store.client.has_collection(name):
                    store.client.drop_collection(name)
            writes = []
            for doc, chunks in zip(documents, chunked, strict=True):
                vectors = rng.standard_normal((len(chunks), DIM)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                writes.append(
                    DocumentWrite(
                        doc,
                        chunks,
                        vectors,
                        np.zeros((0, 3), dtype=np.int64),
                        np.zeros((0, DIM), dtype=np.float32),
                    )
                )
            began = time.perf_counter()
            g = store.next_generation()
            report = store.write_generation(g, writes)
            store.publish(g)
            took = time.perf_counter() - began
            print(
                f"milvus ({form}): wrote {report.chunks_written} chunks and "
                f"{report.documents_written} documents in {took:.1f} s "
                f"({report.chunks_written / took:.0f} chunks/s)"
            )
            snap = store.snapshot()
            by_id = {
                chunk_id(d.doc_id, d.sha256, c.start, c.end): d.doc_id
                for d, cs in zip(documents, chunked, strict=True)
                for c in cs
            }

            def milvus_search(
                query: str, snap: Any = snap, by_id: dict[int, str] = by_id, k: int = DEPTH_CHUNKS
            ) -> list[str]:
                ids, _ = snap.lexical(query, k, None)
                return [by_id[int(i)] for i in ids]

            label = f"{where} BM25, {form} text"
            results.append(
                measure(label, milvus_search, dataset.queries, dataset.qrels, args.passes)
            )
            if form == "qa":
                # the serving depth: QA_CANDIDATES (100) chunks a search
                results.append(
                    measure(
                        f"{label}, top {SERVING_K} (latency only)",
                        functools.partial(milvus_search, k=SERVING_K),
                        dataset.queries,
                        dataset.qrels,
                        args.passes,
                    )
                )
                # an update that rewrites 10 % of the documents' rows (a new title, the same
                # text): BM25 should not move; what moves comes from the storage (closed
                # rows still counted, the new rows in their own segment)
                retitled = [
                    DocumentWrite(
                        dataclasses.replace(w.document, title="retitled"),
                        w.chunks,
                        w.chunk_vectors,
                        w.sentences,
                        w.sentence_vectors,
                    )
                    for w in writes[:: len(writes) // (len(writes) // 10)]
                ]
                began = time.perf_counter()
                g2 = store.next_generation()
                report = store.write_generation(g2, retitled)
                store.publish(g2)
                took = time.perf_counter() - began
                print(
                    f"milvus ({form}): update of {report.documents_written} documents "
                    f"({report.chunks_written} chunks) in {took:.1f} s"
                )
                label = f"{where} BM25, {form} text, after the update"
                results.append(
                    measure(
                        label,
                        functools.partial(milvus_search, snap=store.snapshot()),
                        dataset.queries,
                        dataset.qrels,
                        1,
                    )
                )
            store.close()

    print()
    print("| retriever | nDCG@10 | Recall@100 | MRR@10 | p50 ms | p95 ms | searches timed |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "latency only" in r["name"]:
            print(f"| {r['name']} | | | | {r['p50']:.1f} | {r['p95']:.1f} | {r['n']} |")
            continue
        print(
            f"| {r['name']} | {r['ndcg@10']:.3f} | {r['recall@100']:.3f} | {r['mrr@10']:.3f} | "
            f"{r['p50']:.1f} | {r['p95']:.1f} | {r['n']} |"
        )
    print(
        f"\n(timed searches: {args.passes} passes over the queries after the ranking pass; "
        "one pass after the update)"
    )


if __name__ == "__main__":
    main()
