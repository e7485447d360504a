"""One machine at scale: dense (FAISS) and BM25 indexes of synthetic chunks at 100k and 1M.

    .venv/bin/python -m bench.scale [--sizes 100000 1000000] [--queries 200]
                                    [--old-bm25 100000] [--write docs/performance.md]

    # a whole local generation (qa.index: write, load, Searcher.search, an update):
    .venv/bin/python -m bench.scale --what local --sweep --sizes 100000 [--tmp DIR]
    .venv/bin/python -m bench.scale --what local --sweep --sizes 1000000 \
        --merge bench/out/scale.json --write docs/performance.md

Embedding a million chunks takes hours here, so the chunks are synthetic, made by the
real code paths' inputs:

- vectors: 384-dimensional unit vectors (all-MiniLM-L6-v2's size) drawn from one
  anisotropic distribution, ``normalise(z @ B + e)``: ``z`` 64 Gaussian factors with
  scales ``i ** -0.5``, ``B`` a random orthonormal 64 x 384 basis, ``e`` isotropic noise;
  queries are fresh draws from the same distribution (never indexed vectors).
- texts: 60-160 words drawn by frequency from the words of msmarco-5k's passages, with
  2 % rare made-up words (so the vocabulary grows with the corpus, as real text does) and
  a numbered identifier (``v3.12.7``, ``ERR-4012``) in one text of five.

Every figure is measured in a fresh process (``--part``), so resident memory (RSS from
``/proc/self/status``; ``RssFile`` is pages of memory-mapped files, shared between
processes) and peak memory (``ru_maxrss``) belong to that step alone. Latencies are
medians and 95th percentiles of one query at a time on one thread, after 10 warm-up
queries; builds are timed once (a 1M build is minutes on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MSMARCO = ROOT.parent / "shared" / "benchmarks" / "msmarco-5k" / "corpus.jsonl"
DIM = 384
BEGIN, END = "<!-- bench.scale: begin -->", "<!-- bench.scale: end -->"
LOCAL_BEGIN, LOCAL_END = "<!-- bench.scale local: begin -->", "<!-- bench.scale local: end -->"


# --- synthetic data ------------------------------------------------------------------------
def make_vectors(n: int, seed: int) -> np.ndarray:
    """(n, 384) float32 unit vectors, anisotropic (see the module docstring)."""
    basis_rng = np.random.default_rng(12345)  # one distribution for every seed
    basis, _ = np.linalg.qr(basis_rng.standard_normal((DIM, 64)))
    scales = (np.arange(1, 65) ** -0.5).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 65_536):
        m = min(65_536, n - lo)
        z = rng.standard_normal((m, 64), dtype=np.float32) * scales
        x = z @ basis.T.astype(np.float32)
        x += rng.standard_normal((m, DIM), dtype=np.float32) * (0.35 / np.sqrt(DIM))
        out[lo : lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_ids(n: int, seed: int = 3) -> np.ndarray:
    """Distinct non-contiguous int64 ids, as content hashes are."""
    ids = np.unique(np.random.default_rng(seed).integers(0, 2**62, int(n * 1.01) + 100))
    return np.random.default_rng(seed + 1).permutation(ids)[:n].astype(np.int64)


def vocabulary() -> tuple[np.ndarray, np.ndarray]:
    """(words, probabilities) of msmarco-5k's passages, most frequent first."""
    counts: Counter[str] = Counter()
    with MSMARCO.open(encoding="utf-8") as fh:
        for line in fh:
            counts.update(re.findall(r"[A-Za-z]+(?:'[a-z]+)?", json.loads(line)["text"]))
    words, freq = zip(*counts.most_common(), strict=True)
    p = np.asarray(freq, dtype=np.float64)
    return np.asarray(words, dtype=object), p / p.sum()


def make_texts(n: int, seed: int = 11) -> list[str]:
    words, p = vocabulary()
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    rare = [
        bytes(letters[rng.integers(0, 26, rng.integers(5, 10))]).decode() for _ in range(200_000)
    ]
    rare_words = np.asarray(rare, dtype=object)
    out: list[str] = []
    for lo in range(0, n, 10_000):
        m = min(10_000, n - lo)
        lengths = rng.integers(60, 161, m)
        picks = words[rng.choice(len(words), int(lengths.sum()), p=p)]
        swap = rng.random(len(picks)) < 0.02
        picks[swap] = rare_words[rng.integers(0, len(rare_words), int(swap.sum()))]
        at = 0
        for i, length in enumerate(lengths):
            text = " ".join(picks[at : at + length])
            at += length
            if (lo + i) % 5 == 0:
                code = int(rng.integers(0, 10_000))
                text += f" v{code % 7}.{code % 13}.{code % 101} ERR-{code}."
            out.append(text)
    return out


def make_queries(count: int, seed: int = 13) -> list[str]:
    """2-6 content words (frequency ranks 50-20,000) a query."""
    words, _ = vocabulary()
    rng = np.random.default_rng(seed)
    pool = words[50:20_000]
    return [" ".join(rng.choice(pool, rng.integers(2, 7))) for _ in range(count)]


# --- measurement helpers -------------------------------------------------------------------
def rss_mb() -> dict[str, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latencies(fn: Callable[[int], Any], count: int, warmup: int = 10) -> dict[str, float]:
    for i in range(min(warmup, count)):
        fn(i)
    times = []
    cpu = time.process_time()
    for i in range(count):
        began = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - began) * 1000)
    cpu_ms = (time.process_time() - cpu) * 1000 / max(count, 1)
    times.sort()
    return {"p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))],
            "cpu": cpu_ms}  # fmt: skip


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- parts, each run in its own process ------------------------------------------------------
def part_dense_build(n: int, work: Path, queries: int) -> dict[str, Any]:
    import faiss

    from qa import ann

    # ids are the rows: the approximate index is re-ranked on the float16 index of its rows
    xb, ids, xq = make_vectors(n, seed=1), np.arange(n), make_vectors(queries, seed=2)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    began = time.perf_counter()
    _, truth_rows = faiss.knn(xq, xb, 100, metric=faiss.METRIC_INNER_PRODUCT)
    truth_s = time.perf_counter() - began
    np.save(work / "truth.npy", ids[truth_rows])
    np.save(work / "queries.npy", xq)
    np.save(work / "ids.npy", ids)
    out: dict[str, Any] = {"n": n, "truth_s": truth_s}
    # today's store: exact float32 (IndexIDMap2(IndexFlatIP)), written whole
    began = time.perf_counter()
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    flat.add_with_ids(xb, ids)
    out["flat_build_s"] = time.perf_counter() - began
    out["flat_bytes"] = ann.save(flat, work / "flat.faiss")
    del flat
    config = ann.AnnConfig()
    began = time.perf_counter()
    exact = ann.exact_rows(xb)
    index = ann.build(xb, None, config, exact=exact)
    out["ann_build_s"] = time.perf_counter() - began
    out["ann_kind"] = ann.kind_of(index)
    out["nprobe"] = ann.nprobe_of(index)
    out["shortlist"] = ann.shortlist_of(index)
    out["nlist"] = ann.lists_for(n) if out["ann_kind"] != ann.EXACT else None
    out["exact_bytes"] = ann.save(exact, work / "exact.faiss")
    (work / "build.json").write_text(json.dumps({"shortlist": out["shortlist"]}))
    began = time.perf_counter()
    out["ann_bytes"] = ann.save(index, work / "ann.faiss")
    out["ann_write_s"] = time.perf_counter() - began
    out["build_peak_mb"] = peak_mb()
    return out


def part_dense_search(n: int, work: Path, queries: int, which: str) -> dict[str, Any]:
    import faiss

    from qa import ann

    xq = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    ids = np.load(work / "ids.npy")
    built = json.loads((work / "build.json").read_text()) if which == "ann" else {}
    before = rss_mb()
    began = time.perf_counter()
    if which == "ann":  # re-ranked on the float16 index of the same rows
        exact = ann.load_mmap(work / "exact.faiss")
        index = ann.load_mmap(work / "ann.faiss", exact, built.get("shortlist") or 256)
    else:
        index = ann.load_mmap(work / f"{which}.faiss")
    out: dict[str, Any] = {"load_s": time.perf_counter() - began}
    after = rss_mb()
    out["rss_after_load_mb"] = {k: after[k] - before[k] for k in after}
    faiss.omp_set_num_threads(1)
    count = min(queries, 60) if which == "flat" and n > 200_000 else queries
    found: list[np.ndarray] = [np.zeros(0)] * count
    out["k100"] = latencies(lambda i: ann.search(index, xq[i], 100), count)

    def top10(i: int) -> None:
        found[i] = ann.search(index, xq[i], 10)[0]

    out["k10"] = latencies(top10, count)
    out["recall@10"] = ann.recall_at(truth[:count, :10], np.stack(found))
    rng = np.random.default_rng(5)
    for share in (0.1, 0.001):
        allowed = rng.choice(ids, max(1, int(share * n)), replace=False)
        out[f"filter_{share}"] = latencies(
            lambda i, a=allowed: ann.search(index, xq[i], 100, ids=a), min(count, 60)
        )
    end = rss_mb()
    out["rss_after_search_mb"] = {k: end[k] - before[k] for k in end}
    return out


def part_exact_sweep(sizes: list[int], queries: int) -> dict[str, Any]:
    """Search p50 of exact float32, exact float16 and IVF-SQ8 (calibrated) by size."""
    import faiss

    from qa import ann

    xb_all, ids_all = make_vectors(max(sizes), seed=1), np.arange(max(sizes))
    xq = make_vectors(queries, seed=2)
    rows = {}
    for n in sizes:
        xb, ids = xb_all[:n], ids_all[:n]
        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        flat.add_with_ids(xb, ids)
        fp16 = ann.build(xb, ids, ann.AnnConfig(min_chunks=n + 1))
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        began = time.perf_counter()
        ivf = ann.build(xb, None, ann.AnnConfig(min_chunks=0))
        ivf_build = time.perf_counter() - began
        faiss.omp_set_num_threads(1)
        _, truth_rows = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
        found = np.stack([ann.search(ivf, q, 10)[0] for q in xq])
        rows[n] = {
            "flat32": latencies(lambda i, f=flat: ann.search(f, xq[i], 100), queries)["p50"],
            "fp16": latencies(lambda i, f=fp16: ann.search(f, xq[i], 100), queries)["p50"],
            "ivf": latencies(lambda i, f=ivf: ann.search(f, xq[i], 100), queries)["p50"],
            "ivf_build_s": ivf_build,
            "nprobe": ann.nprobe_of(ivf),
            "nlist": ann.lists_for(n),
            "recall": ann.recall_at(ids[truth_rows], found),
        }
    return rows


def _old_bm25_build(texts: list[str]) -> Any:
    """BM25Index.build as on main at d764e7d: bm25s.tokenize to token strings, then
    ``bm25s.BM25().index`` on the lists of strings."""
    import bm25s
    import Stemmer

    from qa.lexical import _COMPOUND
    from qa.normalize import search_form

    forms = [search_form(t) for t in texts]
    tokens = bm25s.tokenize(
        forms,
        stopwords="en",
        stemmer=Stemmer.Stemmer("english"),
        return_ids=False,
        show_progress=False,
    )
    out = [list(t) for t in tokens]
    for terms, text in zip(out, forms, strict=True):
        terms.extend(
            m.group(0).lower()
            for m in _COMPOUND.finditer(text)
            if any(ch.isdigit() for ch in m.group(0))
        )
    retriever = bm25s.BM25()
    retriever.index(out, show_progress=False)
    return retriever


def part_bm25_build(n: int, work: Path, old: bool) -> dict[str, Any]:
    from qa.lexical import BM25Index

    texts = make_texts(n)
    base = rss_mb()["VmRSS"]
    base_peak = peak_mb()
    began = time.perf_counter()
    if old:
        _old_bm25_build(texts)
        out: dict[str, Any] = {"build_s": time.perf_counter() - began}
    else:
        index = BM25Index.build(texts)
        out = {"build_s": time.perf_counter() - began}
        index.save(work)
        out["bytes"] = dir_bytes(work / BM25Index.DIR_NAME)
        out["nnz"] = len(index._retriever.scores["data"])
        out["terms"] = len(index._retriever.vocab_dict)
    out["texts_mb"] = base
    out["peak_mb"] = peak_mb()
    out["peak_above_texts_mb"] = peak_mb() - base
    out["peak_before_build_mb"] = base_peak
    out["chars"] = sum(map(len, texts))
    return out


def part_bm25_search(n: int, work: Path, queries: int) -> dict[str, Any]:
    from qa.lexical import BM25Index

    qs = make_queries(queries)
    before = rss_mb()
    began = time.perf_counter()
    index = BM25Index.load(work, n)
    out: dict[str, Any] = {"load_s": time.perf_counter() - began}
    after = rss_mb()
    out["rss_after_load_mb"] = {k: after[k] - before[k] for k in after}
    out["top100"] = latencies(lambda i: index.top(qs[i], 100), queries)
    out["scores"] = latencies(lambda i: index.scores(qs[i]), queries)
    rows = np.arange(0, n, 10)
    out["top100_filter_0.1"] = latencies(lambda i: index.top(qs[i], 100, rows=rows), queries)
    end = rss_mb()
    out["rss_after_search_mb"] = {k: end[k] - before[k] for k in end}
    return out


def _qa_from(source: str) -> str:
    """Import ``qa`` from ``source`` (a tree of an earlier commit, see
    :func:`qa_tree`) instead of this checkout; "-" for this checkout. Returns the path of
    the ``qa`` imported."""
    if source != "-":
        sys.path.insert(0, source)
    import qa

    return str(Path(qa.__file__).parent)


def qa_tree(rev: str, target: Path) -> Path:
    """``qa/`` as it was at commit ``rev`` (``git archive``), under ``target``."""
    import io
    import tarfile

    done = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "qa"],
        check=True,
        capture_output=True,
    )
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def part_terms_build(n: int, work: Path, source: str) -> dict[str, Any]:
    """The index's BM25 data (qa.index.terms.TermCounts of one segment): build and save."""
    out: dict[str, Any] = {"qa": _qa_from(source), "load_avg": [os.getloadavg()[0]]}
    from qa.index.terms import TermCounts

    texts = make_texts(n)
    base = rss_mb()["VmRSS"]
    began, cpu = time.perf_counter(), time.process_time()
    counts = TermCounts.build(texts)
    out["build_s"] = time.perf_counter() - began
    out["build_cpu_s"] = time.process_time() - cpu
    out["terms"], out["nnz"] = len(counts.vocab), len(counts.rows)
    out["texts_mb"] = base
    out["peak_mb"] = peak_mb()
    out["peak_above_texts_mb"] = peak_mb() - base
    out["chars"] = sum(map(len, texts))
    began = time.perf_counter()
    counts.save(work)
    out["write_s"] = time.perf_counter() - began
    out["bytes"] = dir_bytes(work)
    out["load_avg"].append(os.getloadavg()[0])
    return out


def make_rare_queries(count: int, seed: int = 17) -> list[str]:
    """2-3 rare words (frequency ranks 10,000-20,000 of msmarco-5k) a query: short
    postings, whose cost should not grow with the corpus."""
    words, _ = vocabulary()
    rng = np.random.default_rng(seed)
    pool = words[10_000:20_000]
    return [" ".join(rng.choice(pool, rng.integers(2, 4))) for _ in range(count)]


def _dense_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` rows of all scores as qa.index.local's ``_top`` and ``lexical`` take them
    (``argpartition`` over every row, then a stable sort; rows scoring 0 dropped)."""
    part = np.argpartition(-scores, k)[:k]
    rows = part[np.argsort(-scores[part], kind="stable")]
    return rows[scores[rows] > 0]


def part_terms_search(n: int, work: Path, queries: int, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {"qa": _qa_from(source), "load_avg": [os.getloadavg()[0]]}
    from qa.index.terms import SegmentedBM25, TermCounts

    qs = make_queries(queries)
    before = rss_mb()
    began = time.perf_counter()
    counts = TermCounts.load(work)
    bm25 = SegmentedBM25([(counts, np.ones(n, dtype=bool), 0)], n)
    out["load_s"] = time.perf_counter() - began
    after = rss_mb()
    out["rss_after_load_mb"] = {k: after[k] - before[k] for k in after}
    out["scores"] = latencies(lambda i: bm25.scores(qs[i]), queries)
    out["top100_dense"] = latencies(lambda i: _dense_top(bm25.scores(qs[i]), 100), queries)
    rare = make_rare_queries(queries)
    out["top100_dense_rare"] = latencies(lambda i: _dense_top(bm25.scores(rare[i]), 100), queries)
    if hasattr(bm25, "top"):  # the top-k over the query terms' postings only
        out["top100"] = latencies(lambda i: bm25.top(qs[i], 100), queries)
        allowed = np.zeros(n, dtype=bool)
        allowed[::10] = True
        out["top100_filter_0.1"] = latencies(lambda i: bm25.top(qs[i], 100, allowed), queries)
        rare = make_rare_queries(queries)
        out["top100_rare"] = latencies(lambda i: bm25.top(rare[i], 100), queries)
        same = 0
        for query in qs:  # the same 100 rows as all scores sorted by (-score, row)
            scores = bm25.scores(query)
            order = np.lexsort((np.arange(n), -scores))[:100]
            same += bm25.top(query, 100)[0].tolist() == order[scores[order] > 0].tolist()
        out["top100_same_as_dense"] = f"{same}/{len(qs)}"
    end = rss_mb()
    out["rss_after_search_mb"] = {k: end[k] - before[k] for k in end}
    out["load_avg"].append(os.getloadavg()[0])
    return out


# --- a whole local generation (qa.index) ----------------------------------------------------
CHUNKS_PER_DOC = 10
SENTENCES_PER_CHUNK = 4
FILTERS = {"10 %": "f3/", "0.1 %": "f3/g07/"}  # path prefixes and the share they allow
TERM_FILES = ("terms.json", "tf_indptr.npy", "tf_rows.npy", "tf_counts.npy", "lengths.npy")


def doc_path(d: int) -> str:
    return f"f{d % 10}/g{(d // 10) % 100:02d}/doc{d}.txt"


def synthetic_documents(texts: list[str], first: int = 0) -> tuple[list[Any], list[Any], Any]:
    """Documents of ``CHUNKS_PER_DOC`` chunk texts each (joined by a blank line), their
    chunks with exact spans, and (chunk row, start, end) of 4 sentences a chunk."""
    from qa.documents import Chunk, Document

    docs: list[Document] = []
    chunks: list[Chunk] = []
    sentences = np.zeros((len(texts) * SENTENCES_PER_CHUNK, 3), dtype=np.int64)
    for d, lo in enumerate(range(0, len(texts), CHUNKS_PER_DOC), start=first):
        parts = texts[lo : lo + CHUNKS_PER_DOC]
        text = "\n\n".join(parts)
        doc = Document(doc_path(d), doc_path(d), f"Document {d}", text, sha256=f"{d:064x}")
        docs.append(doc)
        at = 0
        for i, part in enumerate(parts):
            row = len(chunks)
            chunks.append(Chunk(doc.doc_id, at, at + len(part), part, 2 * i + 1, 2 * i + 1,
                                None, f"Document {d}"))  # fmt: skip
            cuts = [0]
            for q in (1, 2, 3):
                space = part.find(" ", q * len(part) // 4)
                cuts.append(space if space > cuts[-1] else cuts[-1])
            cuts.append(len(part))
            for j in range(SENTENCES_PER_CHUNK):
                sentences[row * SENTENCES_PER_CHUNK + j] = (row, at + cuts[j], at + cuts[j + 1])
            at += len(part) + 2
    return docs, chunks, sentences


def sentence_vectors(chunk_vectors: np.ndarray, seed: int) -> np.ndarray:
    """float16 unit vectors near their chunk's (4 a chunk), made a block at a time."""
    rng = np.random.default_rng(seed)
    n = len(chunk_vectors)
    out = np.empty((n * SENTENCES_PER_CHUNK, DIM), dtype=np.float16)
    for lo in range(0, n, 65_536):
        block = np.repeat(chunk_vectors[lo : lo + 65_536], SENTENCES_PER_CHUNK, axis=0)
        block = block + rng.standard_normal(block.shape, dtype=np.float32) * 0.04
        out[lo * SENTENCES_PER_CHUNK : lo * SENTENCES_PER_CHUNK + len(block)] = block / (
            np.linalg.norm(block, axis=1, keepdims=True)
        )
    return out


def _spec() -> Any:
    from qa.index import IndexSpec

    return IndexSpec("synthetic-384", 192, 32)


def _generation(segment: Any, documents: dict[str, Any], segments: dict[str, str]) -> Any:
    from qa.index import GenerationPayload

    return GenerationPayload(segment, documents, segments, [], _spec(), DIM, {})


def part_local_write(n: int, work: Path) -> dict[str, Any]:
    """A generation of ``n`` chunks written by ``LocalIndexStore.write`` (one segment)."""
    from qa.ann import AnnConfig
    from qa.index import LocalIndexStore
    from qa.index.segment import SegmentPayload

    began = time.perf_counter()
    docs, chunks, sentences = synthetic_documents(make_texts(n))
    vectors = make_vectors(n, seed=1)
    segment = SegmentPayload(docs, chunks, make_ids(n), vectors, sentences,
                             sentence_vectors(vectors, seed=4), DIM)  # fmt: skip
    out: dict[str, Any] = {"make_s": time.perf_counter() - began, "documents": len(docs)}
    documents = {
        d.doc_id: {"path": d.path, "sha256": d.sha256, "chunks": CHUNKS_PER_DOC,
                   "sentences": CHUNKS_PER_DOC * SENTENCES_PER_CHUNK, "segment": None}
        for d in docs
    }  # fmt: skip
    store = LocalIndexStore(work / "index", ann=AnnConfig())
    out["load_avg"] = [os.getloadavg()[0]]
    base_peak = peak_mb()
    began, cpu = time.perf_counter(), time.process_time()
    with store.lock():
        store.write(_generation(segment, documents, {}))
    out["write_s"] = time.perf_counter() - began
    out["write_cpu_s"] = time.process_time() - cpu
    out["load_avg"].append(os.getloadavg()[0])
    out["peak_mb"], out["peak_before_write_mb"] = peak_mb(), base_peak
    seg_dir = work / "index" / "segments" / "seg-000001"
    manifest = json.loads((seg_dir / "manifest.json").read_text("utf-8"))
    out["vectors"] = manifest["vectors"]
    out["files"] = {name: meta["bytes"] for name, meta in manifest["files"].items()}
    out["bytes"] = dir_bytes(work / "index")
    return out


def _queries(count: int) -> tuple[list[str], np.ndarray]:
    return make_queries(count), make_vectors(count, seed=2)


def part_local_search(n: int, work: Path, queries: int) -> dict[str, Any]:
    """Load the generation in a fresh process, then time ``Searcher.search`` and its
    dense part."""
    from qa.index import Filters, load_current
    from qa.index.files import verify_generation
    from qa.index.publish import current_generation_dir
    from qa.search import Searcher

    texts, vectors = _queries(queries)
    load_avg = [os.getloadavg()[0]]
    before = rss_mb()
    began = time.perf_counter()
    snap = load_current(work / "index", _spec())
    out: dict[str, Any] = {"load_s": time.perf_counter() - began, "load_avg": load_avg}
    after = rss_mb()
    out["rss_after_load_mb"] = {k: after[k] - before[k] for k in after}
    gen_dir = current_generation_dir(work / "index")
    assert gen_dir is not None
    began = time.perf_counter()
    verify_generation(gen_dir)
    out["checksum_s"] = time.perf_counter() - began
    searcher = Searcher(snap)
    out["search"] = latencies(lambda i: searcher.search(texts[i], vectors[i], 10), queries)
    for label, prefix in FILTERS.items():
        f = Filters(path_prefix=prefix)
        out["count " + label] = snap.count(f)
        out["search " + label] = latencies(
            lambda i, f=f: searcher.search(texts[i], vectors[i], 10, f), queries
        )
        out["dense " + label] = latencies(lambda i, f=f: snap.dense(vectors[i], 100, f), queries)
    out["dense"] = latencies(lambda i: snap.dense(vectors[i], 100, None), queries)
    out["lexical"] = latencies(lambda i: snap.lexical(texts[i] + " x", 100, None), queries)
    load_avg.append(os.getloadavg()[0])
    end = rss_mb()
    out["rss_after_search_mb"] = {k: end[k] - before[k] for k in end}
    out["peak_mb"] = peak_mb()
    found = [snap.dense(v, 10, None).ids for v in vectors]
    found100 = [snap.dense(v, 100, None).ids for v in vectors]  # Searcher's candidates
    import faiss

    xb = make_vectors(n, seed=1).astype(np.float16).astype(np.float32)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, truth_rows = faiss.knn(vectors, xb, 100, metric=faiss.METRIC_INNER_PRODUCT)
    ids = make_ids(n)
    hits = [
        len(np.intersect1d(f, ids[t[:10]])) / 10 for f, t in zip(found, truth_rows, strict=True)
    ]
    out["recall@10"] = float(np.mean(hits))
    hits = [len(np.intersect1d(f, ids[t])) / 100 for f, t in zip(found100, truth_rows, strict=True)]
    out["recall@100"] = float(np.mean(hits))
    return out


def part_local_update(n: int, work: Path) -> dict[str, Any]:
    """One changed document: what the builder does with the store (load the generation in
    service, take the vectors of the old version's texts, write one segment and a
    manifest, put it in service), then a reload of the new generation; timed in a process
    that has loaded the generation once (a server updating its own index), the first
    load timed apart."""
    from qa.index import LocalIndexStore, load_current
    from qa.index.ids import chunk_ids
    from qa.index.segment import SegmentPayload

    index = work / "index"
    bytes_before = dir_bytes(index)
    store = LocalIndexStore(index)
    d = 5  # the changed document: the same path, new text
    texts = make_texts(CHUNKS_PER_DOC, seed=99)
    docs, chunks, sentences = synthetic_documents(texts, first=d)
    doc = docs[0]
    vectors = make_vectors(len(chunks), seed=98)
    ids = chunk_ids(doc.doc_id, doc.sha256 + "new", [(c.start, c.end) for c in chunks])
    segment = SegmentPayload(docs, chunks, ids, vectors, sentences,
                             sentence_vectors(vectors, seed=97), DIM)  # fmt: skip
    load_avg = [os.getloadavg()[0]]
    began = time.perf_counter()
    served = store.load(_spec())  # what a serving process holds: every file hashed once
    first_load = time.perf_counter() - began
    began = time.perf_counter()
    with store.lock():
        previous = store.load(_spec())
        loaded = time.perf_counter()
        previous.known_vectors([doc.doc_id])
        documents = dict(previous.manifest["documents"])
        documents[doc.doc_id] = {**documents[doc.doc_id], "sha256": "0" * 63 + "1",
                                 "segment": None}  # fmt: skip
        written_at = time.perf_counter()
        gen_dir = store.write(_generation(segment, documents, dict(previous.segment_checksums)))
    done = time.perf_counter()
    out: dict[str, Any] = {
        "total_s": done - began,
        "load_previous_s": loaded - began,
        "write_s": done - written_at,
        "first_load_s": first_load,
        "load_avg": [*load_avg, os.getloadavg()[0]],
    }
    new_segment = index / "segments" / "seg-000002"
    out["bytes_written"] = dir_bytes(new_segment) + dir_bytes(gen_dir)
    out["index_bytes"] = bytes_before
    out["share"] = out["bytes_written"] / bytes_before
    began = time.perf_counter()
    snap = load_current(index, _spec())
    out["reload_s"] = time.perf_counter() - began
    assert snap.generation == 2 and snap.dead_chunks == CHUNKS_PER_DOC
    assert served.generation == 1  # held until here, as a server holds its generation
    return out


def local_report(results: dict[str, Any]) -> str:
    """The section of docs/performance.md between LOCAL_BEGIN and LOCAL_END."""
    lines = [LOCAL_BEGIN, "### Output of `python -m bench.scale --what local`", ""]
    lines.append(
        f"One segment of synthetic chunks ({CHUNKS_PER_DOC} a document, "
        f"{SENTENCES_PER_CHUNK} sentence vectors a chunk) written by `LocalIndexStore.write`, "
        "loaded by `load_current` in a fresh process and searched with `Searcher.search` "
        "(hybrid, top 10, the query vector given: no embedding). Filters are path prefixes."
    )
    lines.append("")

    def files(r: dict[str, Any], *names: str) -> str:
        return f"{sum(r['write']['files'].get(x, 0) for x in names) / 1e6:.0f}"

    def rss(d: dict[str, float]) -> str:
        return f"{d['RssAnon']:.0f} + {d['RssFile']:.0f}"

    table(lines, results["local"], [
        ("documents", lambda r: f"{r['write']['documents']:,}"),
        ("write s (CPU s)", lambda r: (
            f"{r['write']['write_s']:.1f} ({r['write']['write_cpu_s']:.1f})")),
        ("peak RSS of the writing process MB", lambda r: f"{r['write']['peak_mb']:.0f}"),
        ("vector index", lambda r: f"{r['write']['vectors']['kind']}"
            + (f", nprobe {r['write']['vectors']['nprobe']}"
               if r["write"]["vectors"]["nprobe"] else "")
            + (f", shortlist {r['write']['vectors']['shortlist']}"
               if r["write"]["vectors"].get("shortlist") else "")),
        ("bytes on disk MB", lambda r: f"{r['write']['bytes'] / 1e6:.0f}"),
        ("  chunk vectors: exact float16 / approximate index MB", lambda r: (
            f"{files(r, 'vectors.faiss')} / {files(r, 'ann.faiss')}")),
        ("  sentence vectors: 8-bit codes + scales MB", lambda r: files(
            r, "sentence_codes.npy", "sentence_scales.npy", "sentence_vectors.npy")),
        ("  texts / chunk columns MB", lambda r: (
            f"{files(r, 'texts.txt')} / "
            + files(r, *[k for k in r["write"]["files"] if k.startswith("chunk_")]))),
        ("  BM25 term counts / identifiers MB", lambda r: (
            f"{files(r, *TERM_FILES)} / {files(r, 'identifiers.json')}")),
        ("load s (of which checksums)", lambda r: (
            f"{r['search']['load_s']:.2f} ({r['search']['checksum_s']:.2f})")),
        ("RSS after load, anon + file MB", lambda r: rss(r["search"]["rss_after_load_mb"])),
        ("RSS after searches, anon + file MB", lambda r: rss(r["search"]["rss_after_search_mb"])),
        ("`Searcher.search`, no filter", lambda r: fmt_ms(r["search"]["search"])),
        ("  CPU ms a search (process time / searches)", lambda r: cpu_ms(r["search"]["search"])),
        *[(f"`Searcher.search`, filter allows {k}",
           lambda r, k=k: fmt_ms(r["search"]["search " + k])) for k in FILTERS],
        ("dense part (`snapshot.dense`, k=100)", lambda r: fmt_ms(r["search"]["dense"])),
        ("  CPU ms a dense part", lambda r: cpu_ms(r["search"]["dense"])),
        *[(f"dense part, filter allows {k}", lambda r, k=k: fmt_ms(r["search"]["dense " + k]))
          for k in FILTERS],
        ("BM25 part (`snapshot.lexical`, k=100)", lambda r: fmt_ms(r["search"]["lexical"])),
        ("dense recall@10 against exact", lambda r: f"{r['search']['recall@10']:.3f}"),
        ("dense recall@100 against exact (k=100)", lambda r: (
            f"{r['search']['recall@100']:.3f}" if "recall@100" in r["search"] else "-")),
        ("one-document update s (load previous + write)", lambda r: (
            f"{r['update']['total_s']:.2f} ({r['update']['load_previous_s']:.2f} + "
            f"{r['update']['write_s']:.2f})")),
        ("  bytes written (share of the index)", lambda r: (
            f"{r['update']['bytes_written'] / 1e6:.2f} MB ({100 * r['update']['share']:.2f} %)")),
        ("  reload of the new generation s", lambda r: f"{r['update']['reload_s']:.2f}"),
        ("  first load in that process s (every file hashed)", lambda r: (
            f"{r['update']['first_load_s']:.2f}")),
        ("load average (1 min) at start / end: write; search; update", lambda r: "; ".join(
            " / ".join(f"{x:.1f}" for x in r[part].get("load_avg", [])) or "-"
            for part in ("write", "search", "update"))),
    ])  # fmt: skip
    lines += ["", f"({results['machine']}; latencies p50 / p95 ms, one query at a time.)"]
    lines += ["", LOCAL_END]
    return "\n".join(lines) + "\n"


# --- driver --------------------------------------------------------------------------------
def terms_entry(n: int, queries: str, before: str) -> dict[str, Any]:
    """BM25 term counts at ``n`` chunks: this checkout ("after") and, with ``before``, the
    qa/ of that commit ("before"), each built, saved and searched in fresh processes."""
    entry: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="qa-scale-") as tmp:
        versions = [("after", "-")]
        if before:
            versions.append(("before", str(qa_tree(before, Path(tmp) / "before"))))
            entry["before_rev"] = before
        for name, source in versions:
            work = Path(tmp) / f"work-{name}"
            work.mkdir()
            print(f"bm25 term counts {n:,} ({name})", file=sys.stderr)
            entry[name] = {
                "build": run_part("terms-build", str(n), str(work), source),
                "search": run_part("terms-search", str(n), str(work), queries, source),
            }
            shutil.rmtree(work)
    return entry


def run_part(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scale", "--part", *args]
    print("  $", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def cpu_ms(d: dict[str, float]) -> str:
    return f"{d['cpu']:.2f}" if "cpu" in d else "-"


def fmt_ms(d: dict[str, float]) -> str:
    return f"{d['p50']:.2f} / {d['p95']:.2f}"


def table(
    lines: list[str],
    by_size: dict[str, Any],
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]],
) -> None:
    sizes = sorted(by_size, key=int)
    lines.append("| | " + " | ".join(f"{int(n):,} chunks" for n in sizes) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(get(by_size[n]) for n in sizes) + " |")


def terms_report(lines: list[str], by_size: dict[str, Any]) -> None:
    """The BM25 term counts table: each size's "before" and "after" side by side."""
    lines += ["", "#### BM25: the index's term counts (`qa.index.terms`)", ""]
    revs = {e["before_rev"] for e in by_size.values() if "before_rev" in e}
    lines.append(
        "What a segment stores for BM25 (`TermCounts`: term frequencies by term, chunk "
        "lengths), built, saved, loaded memory-mapped and searched (`SegmentedBM25`), one "
        "segment of all-live chunks. *before*: `qa/` of main at "
        f"{', '.join(sorted(revs)) or '-'} (`git archive`), *after*: this checkout; each "
        "in fresh processes of the same run. *top 100 (all rows)*: `scores()` then "
        "`argpartition` over every row, as `LocalSnapshot.lexical` does; *top 100 "
        "(postings)*: `SegmentedBM25.top`, over the chunks holding a query term only. "
        "Queries: 2-6 words of frequency ranks 50-20,000; rare-word queries: 2-3 words of "
        "ranks 10,000-20,000."
    )
    lines.append("")
    cols = [(n, v) for n in sorted(by_size, key=int) for v in ("before", "after")]
    cols = [(n, v) for n, v in cols if v in by_size[n]]
    lines.append("| | " + " | ".join(f"{int(n):,} chunks, {v}" for n, v in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))

    def ms(r: dict[str, Any], key: str) -> str:
        return fmt_ms(r["search"][key]) if key in r["search"] else "-"

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("text (characters)", lambda r: f"{r['build']['chars'] / 1e6:.0f} M"),
        ("terms / (term, chunk) pairs", lambda r: (
            f"{r['build']['terms']:,} / {r['build']['nnz'] / 1e6:.1f} M")),
        ("build s (CPU s)", lambda r: (
            f"{r['build']['build_s']:.1f} ({r['build']['build_cpu_s']:.1f})")),
        ("peak RSS of the build, MB (above the texts)", lambda r: (
            f"{r['build']['peak_mb']:.0f} ({r['build']['peak_above_texts_mb']:.0f})")),
        ("load average (1 min) at build start / end", lambda r: (
            " / ".join(f"{x:.1f}" for x in r["build"]["load_avg"]))),
        ("save s", lambda r: f"{r['build']['write_s']:.1f}"),
        ("bytes on disk", lambda r: f"{r['build']['bytes'] / 1e6:.0f} MB"),
        ("load (memory-mapped) ms", lambda r: f"{r['search']['load_s'] * 1000:.0f}"),
        ("RSS after searches, anon + file MB", lambda r: (
            f"{r['search']['rss_after_search_mb']['RssAnon']:.0f} + "
            f"{r['search']['rss_after_search_mb']['RssFile']:.0f}")),
        ("`scores(query)`", lambda r: ms(r, "scores")),
        ("top 100 (all rows)", lambda r: ms(r, "top100_dense")),
        ("top 100 (postings)", lambda r: ms(r, "top100")),
        ("top 100 (postings), filter allows 10 %", lambda r: ms(r, "top100_filter_0.1")),
        ("top 100 (all rows), rare-word queries", lambda r: ms(r, "top100_dense_rare")),
        ("top 100 (postings), rare-word queries", lambda r: ms(r, "top100_rare")),
        ("top 100 (postings) = sorted `scores()`", lambda r: (
            r["search"].get("top100_same_as_dense", "-"))),
        ("load average (1 min) at search start / end", lambda r: (
            " / ".join(f"{x:.1f}" for x in r["search"]["load_avg"]))),
    ]  # fmt: skip
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(get(by_size[n][v]) for n, v in cols) + " |")


def report(results: dict[str, Any]) -> str:
    lines = [BEGIN, "### Output of `python -m bench.scale`", ""]
    lines.append(
        "`python -m bench.scale` (synthetic chunks, real code paths: `qa/ann.py`, "
        "`qa/lexical.py`; how the data is made is in the script's docstring). "
        f"{results['machine']}. Latencies are p50 / p95 in ms of one query at a time on one "
        "thread; memory is RSS of a fresh process (anonymous + file-backed: file pages are "
        "memory-mapped index files, shared by every process serving them)."
    )
    lines += ["", "#### Exact or approximate, by size (`QA_ANN_MIN_CHUNKS`)", ""]
    lines.append(
        "| vectors | exact float32 (today) | exact float16 | approximate (qa.ann) "
        "| IVF lists / nprobe | IVF recall@10 | IVF build s |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for n, r in sorted(results["sweep"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {int(n):,} | {r['flat32']:.2f} | {r['fp16']:.2f} | {r['ivf']:.2f} | "
            f"{r['nlist']} / {r['nprobe']} | {r['recall']:.3f} | {r['ivf_build_s']:.1f} |"
        )
    lines.append("")
    lines.append(
        "(p50 ms of a k=100 search; the approximate index is `qa.ann.build`'s, its nprobe "
        "calibrated at build for recall@10 0.95.)"
    )
    lines += ["", "#### Dense index", ""]
    dense = [results["dense"][n] for n in sorted(results["dense"], key=int)]
    lines.append(
        "| | " + " | ".join(f"{int(n):,} chunks" for n in sorted(results["dense"], key=int)) + " |"
    )
    lines.append("|---|" + "---|" * len(dense))

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(get(r) for r in dense) + " |")

    row("index type chosen", lambda r: f"{r['build']['ann_kind']}" + (
        f" ({r['build']['nlist']} lists, nprobe {r['build']['nprobe']})"
        if r["build"]["nprobe"] else ""))  # fmt: skip
    row("build (train, add, calibrate) s", lambda r: f"{r['build']['ann_build_s']:.1f}")
    row("bytes on disk", lambda r: f"{r['build']['ann_bytes'] / 1e6:.0f} MB")
    row(
        "bytes on disk, exact float32 (today)", lambda r: f"{r['build']['flat_bytes'] / 1e6:.0f} MB"
    )
    row("load (memory-mapped) ms", lambda r: f"{r['ann']['load_s'] * 1000:.0f}")
    row("RSS after load, anon + file MB", lambda r: (
        f"{r['ann']['rss_after_load_mb']['RssAnon']:.0f} + "
        f"{r['ann']['rss_after_load_mb']['RssFile']:.0f}"))  # fmt: skip
    row("RSS after searches, anon + file MB", lambda r: (
        f"{r['ann']['rss_after_search_mb']['RssAnon']:.0f} + "
        f"{r['ann']['rss_after_search_mb']['RssFile']:.0f}"))  # fmt: skip
    row("search k=100, chosen index", lambda r: fmt_ms(r["ann"]["k100"]))
    row("search k=10, chosen index", lambda r: fmt_ms(r["ann"]["k10"]))
    row("recall@10 against exact (fresh queries)", lambda r: f"{r['ann']['recall@10']:.3f}")
    row("search k=100, filter allows 10 %", lambda r: fmt_ms(r["ann"]["filter_0.1"]))
    row("search k=100, filter allows 0.1 %", lambda r: fmt_ms(r["ann"]["filter_0.001"]))
    row("search k=100, exact float32 (today)", lambda r: fmt_ms(r["flat"]["k100"]))
    row("RSS after searches, exact float32, anon + file MB", lambda r: (
        f"{r['flat']['rss_after_search_mb']['RssAnon']:.0f} + "
        f"{r['flat']['rss_after_search_mb']['RssFile']:.0f}"))  # fmt: skip
    if results.get("terms"):
        terms_report(lines, results["terms"])
    if results.get("bm25"):
        lines += ["", "#### BM25: `qa.lexical.BM25Index` (bm25s's precomputed scores)", ""]
        table(lines, results["bm25"], [
            ("build s", lambda r: f"{r['build']['build_s']:.1f}"),
            ("peak RSS of the build, MB (above the texts)", lambda r: (
                f"{r['build']['peak_mb']:.0f} ({r['build']['peak_above_texts_mb']:.0f})")),
            ("build s, main at d764e7d", lambda r: (
                f"{r['old']['build_s']:.1f}" if "old" in r else "not run")),
            ("peak RSS MB, main at d764e7d (above the texts)", lambda r: (
                f"{r['old']['peak_mb']:.0f} ({r['old']['peak_above_texts_mb']:.0f})"
                if "old" in r else "not run")),
            ("bytes on disk", lambda r: f"{r['build']['bytes'] / 1e6:.0f} MB"),
            ("load (memory-mapped) ms", lambda r: f"{r['search']['load_s'] * 1000:.0f}"),
            ("`top(query, 100)`", lambda r: fmt_ms(r["search"]["top100"])),
            ("`scores(query)`", lambda r: fmt_ms(r["search"]["scores"])),
        ])  # fmt: skip
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write(doc: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    text = doc.read_text(encoding="utf-8")
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--sweep", type=int, nargs="*", default=[10_000, 25_000, 50_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--old", type=int, nargs="*", default=[100_000])
    parser.add_argument(
        "--before",
        default="a3ae5a7",
        help="commit whose qa/ BM25 term counts are measured beside this checkout's ('' none)",
    )
    parser.add_argument("--bm25index", type=int, nargs="*", default=[])
    parser.add_argument(
        "--what", nargs="+", default=["dense", "terms"], choices=["dense", "terms", "local"]
    )
    parser.add_argument("--tmp", help="folder for the local generation (default: TMPDIR)")
    parser.add_argument("--merge", type=Path, help="start from an earlier run's scale.json")
    parser.add_argument("--write", type=Path)
    parser.add_argument("--part", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        name, *rest = args.part
        if name == "sweep":
            result: Any = part_exact_sweep([int(x) for x in rest[1:]], int(rest[0]))
        elif name == "dense-build":
            result = part_dense_build(int(rest[0]), Path(rest[1]), int(rest[2]))
        elif name == "dense-search":
            result = part_dense_search(int(rest[0]), Path(rest[1]), int(rest[2]), rest[3])
        elif name == "terms-build":
            result = part_terms_build(int(rest[0]), Path(rest[1]), rest[2])
        elif name == "terms-search":
            result = part_terms_search(int(rest[0]), Path(rest[1]), int(rest[2]), rest[3])
        elif name == "local-write":
            result = part_local_write(int(rest[0]), Path(rest[1]))
        elif name == "local-search":
            result = part_local_search(int(rest[0]), Path(rest[1]), int(rest[2]))
        elif name == "local-update":
            result = part_local_update(int(rest[0]), Path(rest[1]))
        elif name == "bm25-build":
            result = part_bm25_build(int(rest[0]), Path(rest[1]), rest[2] == "old")
        else:
            result = part_bm25_search(int(rest[0]), Path(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return
    results: dict[str, Any] = {"sweep": {}, "dense": {}, "terms": {}, "bm25": {}, "local": {}}
    if args.merge:
        results.update(json.loads(args.merge.read_text()))
    results["machine"] = f"{os.cpu_count()} cores, shared; {platform_line()}"
    q = str(args.queries)
    if args.sweep:
        print("exact/approximate sweep", file=sys.stderr)
        results["sweep"] = run_part("sweep", str(min(args.queries, 100)), *map(str, args.sweep))
    for n in args.sizes:
        if "dense" in args.what:
            with tempfile.TemporaryDirectory(prefix="qa-scale-") as tmp:
                work = Path(tmp)
                print(f"dense {n:,}", file=sys.stderr)
                build = run_part("dense-build", str(n), str(work), q)
                results["dense"][str(n)] = {
                    "build": build,
                    "ann": run_part("dense-search", str(n), str(work), q, "ann"),
                    "flat": run_part("dense-search", str(n), str(work), q, "flat"),
                }
        if "terms" in args.what:
            results["terms"][str(n)] = terms_entry(n, q, args.before)
        if "local" in args.what:
            with tempfile.TemporaryDirectory(prefix="qa-scale-", dir=args.tmp) as tmp:
                work = Path(tmp)
                print(f"local generation {n:,}", file=sys.stderr)
                entry = {"write": run_part("local-write", str(n), str(work))}
                entry["search"] = run_part("local-search", str(n), str(work), q)
                entry["update"] = run_part("local-update", str(n), str(work))
                results["local"][str(n)] = entry
        if n in args.bm25index:
            with tempfile.TemporaryDirectory(prefix="qa-scale-") as tmp:
                work = Path(tmp)
                print(f"bm25s index {n:,}", file=sys.stderr)
                entry = {"build": run_part("bm25-build", str(n), str(work), "new")}
                entry["search"] = run_part("bm25-search", str(n), str(work), q)
                if n in args.old:
                    entry["old"] = run_part("bm25-build", str(n), str(work), "old")
                results["bm25"][str(n)] = entry
        print(json.dumps(results, indent=1, default=str), file=sys.stderr)
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    (ROOT / "bench" / "out" / "scale.json").write_text(json.dumps(results, indent=1))
    if any(results[k] for k in ("sweep", "dense", "terms", "bm25")):
        section = report(results)
        print(section)
        if args.write:
            write(args.write, section)
    if results["local"]:
        local = local_report(results)
        print(local)
        if args.write:
            write(args.write, local, LOCAL_BEGIN, LOCAL_END)


def platform_line() -> str:
    import faiss

    return f"faiss {faiss.__version__}, numpy {np.__version__}"


if __name__ == "__main__":
    main()
