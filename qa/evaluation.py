"""Evaluate retrieval on a BEIR-form data set: nDCG@10, Recall@100, MRR@10, latency.

The corpus goes through the project's own pipeline (chunking included); a document's score
is its best chunk's. Indexes are cached by the corpus content and the settings, outside the
data set's folder (which may be read-only).
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa.builder import ProgressFactory, build_index
from qa.embedder import Embedder
from qa.errors import InvalidRequest, QAError
from qa.index import FORMAT_VERSION, IndexSpec, LocalSnapshot, Snapshot, load_current
from qa.loaders import LoadReport, SkipFile, load_file
from qa.search import FusionConfig, Searcher

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Dataset:
    path: Path
    corpus: Path
    queries: dict[str, str]
    qrels: Qrels


def load_dataset(path: Path) -> Dataset:
    corpus = path / "corpus.jsonl"
    queries_file = path / "queries.jsonl"
    qrels_file = path / "qrels" / "test.tsv"
    for needed in (corpus, queries_file, qrels_file):
        if not needed.is_file():
            raise InvalidRequest(
                f"{needed} is missing; a BEIR folder has corpus.jsonl, queries.jsonl and "
                "qrels/test.tsv"
            )
    qrels: Qrels = {}
    with qrels_file.open(encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if len(row) < 3:
                continue
            qid, did, score = row[0].strip(), row[1].strip(), row[2].strip()
            if not score.lstrip("-").isdigit():  # the optional header line
                continue
            qrels.setdefault(qid, {})[did] = int(score)
    queries: dict[str, str] = {}
    for line in queries_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries[str(row["_id"])] = str(row["text"])
    if not queries:
        raise InvalidRequest(f"no query in {queries_file} has judgements in {qrels_file}")
    return Dataset(path, corpus, queries, {q: qrels[q] for q in queries})


def cache_key(corpus: Path, spec: IndexSpec) -> str:
    """The cached index's name: the corpus's bytes, the index format, the model, the
    chunker and how vectors are made (named only when not the plain fp32 + separate
    sentences, so that the indexes cached before it was a setting keep their names)."""
    digest = hashlib.sha256()
    with corpus.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps([FORMAT_VERSION, spec.model_id, spec.chunker_settings()]).encode())
    if spec.embedding != IndexSpec.embedding:
        digest.update(spec.embedding.encode())
    return digest.hexdigest()[:24]


def index_for(
    dataset: Dataset,
    cache_dir: Path,
    embedder: Embedder,
    spec: IndexSpec,
    progress: ProgressFactory | None = None,
) -> Path:
    """The cached index of the data set's corpus, built when missing."""
    index_dir = cache_dir / "eval" / cache_key(dataset.corpus, spec)
    try:
        load_current(index_dir, spec)
        return index_dir
    except QAError:
        pass
    try:
        documents = list(load_file(dataset.corpus, "corpus.jsonl"))
    except SkipFile as exc:
        raise InvalidRequest(f"{dataset.corpus}: {exc}") from None
    build_index(
        dataset.path,
        index_dir,
        embedder,
        spec,
        keep_generations=1,
        progress=progress,
        reuse=False,
        loaded=LoadReport(documents=documents),
    )
    return index_dir


def trec_metrics(qrels: Qrels, run: Run) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10 as pytrec_eval (trec_eval) defines them, averaged."""
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_query = evaluator.evaluate(run)
    top10 = {
        q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
        for q, docs in run.items()
    }
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    queries = list(qrels)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    return {
        "ndcg@10": mean([per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in queries]),
        "recall@100": mean([per_query.get(q, {}).get("recall_100", 0.0) for q in queries]),
        "mrr@10": mean([mrr.get(q, {}).get("recip_rank", 0.0) for q in queries]),
    }


def run_queries(
    searcher: Searcher,
    embedder: Embedder,
    queries: dict[str, str],
    depth: int = 100,
    on_query: Callable[[], None] | None = None,
) -> tuple[Run, list[float]]:
    """Rank documents for each query (best chunk per document); per-query latency in ms."""
    run: Run = {}
    latencies: list[float] = []
    for qid, text in queries.items():
        began = time.perf_counter()
        vector = embedder.embed([text])[0]
        hits = searcher.search(text, vector, depth * 3, highlight=False, dedupe=False)
        latencies.append((time.perf_counter() - began) * 1000)
        docs: dict[str, float] = {}
        for hit in hits:
            doc_id = hit.chunk.doc_id.split("#", 1)[-1]
            if doc_id not in docs:
                docs[doc_id] = hit.score
            if len(docs) >= depth:
                break
        # pytrec_eval ranks by score; keep our order exactly even on ties
        run[qid] = {d: float(len(docs) - i) for i, d in enumerate(docs)}
        if on_query:
            on_query()
    return run, latencies


def milvus_copy(local: LocalSnapshot, uri: str, spec: IndexSpec) -> Snapshot:
    """The local index copied into a Milvus store at ``uri`` (chunks, vectors, sentences and
    documents as they are: nothing is embedded again), or the copy already there. For
    ``qa eval`` with QA_VECTOR_STORE=milvus: the same chunks searched in either store."""
    from qa.index.files import GenerationPayload
    from qa.milvus_store import MilvusStore

    store = MilvusStore(uri, prefix="qa_eval", keep=1)
    try:
        return store.load(spec)
    except QAError:
        pass
    store.write(
        GenerationPayload(
            segment=local.export([d.doc_id for d in local.documents()]),
            documents={d: {**m, "segment": None} for d, m in local.manifest["documents"].items()},
            segments={},
            skipped=local.manifest["skipped"],
            spec=spec,
            dimension=int(local.manifest["model"]["dimension"]),
            stats=local.manifest["stats"],
        )
    )
    return store.load(spec)


def evaluate(
    dataset: Dataset,
    cache_dir: Path,
    embedder: Embedder,
    spec: IndexSpec,
    mode: str = "hybrid",
    fusion: FusionConfig | None = None,
    candidates: int = 100,
    progress: ProgressFactory | None = None,
    store: str = "faiss",
) -> dict[str, Any]:
    """nDCG@10, Recall@100, MRR@10 (pytrec_eval) and search latency of ``mode`` on the
    data set; ``store`` "milvus" searches a Milvus Lite copy of the cached index."""
    index_dir = index_for(dataset, cache_dir, embedder, spec, progress)
    data: Snapshot = load_current(index_dir, spec)
    if store == "milvus":
        data = milvus_copy(load_current(index_dir, spec), str(index_dir / "milvus.db"), spec)
    base = fusion or FusionConfig()
    config = FusionConfig(**{**base.__dict__, "mode": mode})
    searcher = Searcher(data, candidates=max(candidates, 300), fusion=config)
    embedder.embed(["warm up"])
    run, latencies = run_queries(searcher, embedder, dataset.queries)
    metrics = trec_metrics(dataset.qrels, run)
    ordered = sorted(latencies)
    return {
        **{k: round(v, 4) for k, v in metrics.items()},
        "queries": len(dataset.queries),
        "docs": len(data.documents()),
        "mode": mode,
        "store": store,
        "latency_ms": {
            "p50": round(statistics.median(ordered), 2),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        },
    }
