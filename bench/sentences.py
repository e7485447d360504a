"""What sentence vectors give the ranking and the highlight, by how they are made and kept.

    .venv/bin/python -m bench.sentences [--sets msmarco-5k,keywords] [--top-k 5]

Issue 10, item 3. The index of each data set is the one the settings in force build (the
`qa eval` cache, shared with `bench.quality`); on top of it, without rebuilding:

- **separate**: the sentences of the hits shown are embedded each on its own (the
  highlight and the confidence computed from them). With ``QA_SENTENCE_VECTORS=mixed``
  only the sentences of documents that are one chunk differ from the index's: those are
  pooled from their chunk's tokens there, and they order nothing (qa.fusion orders only
  the chunks of one document by their best sentence), so the ranking is the index's and
  the highlight and confidence are what separate sentences would give;
- **8-bit / 4-bit codes**: every sentence vector the search reads (ranking and highlight)
  replaced by its scalar-quantized copy (one scale a vector: ``round(v / s)`` with
  ``s = max|v| / 127`` or ``/ 7``, decoded as ``codes * s``): what storing codes instead
  of float16 would do.

Per BEIR-form set (hybrid, default fusion): nDCG@10 through qa.evaluation's pipeline, the
share of questions whose first hit highlights the same sentence as with separate
sentences, the median confidence and the answerable questions that abstain. For the
default article: bench.questions' rank 1, MRR and "highlight has evidence".
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality import ROOT, beir_sets, nato_engine
from bench.questions import evaluate as evaluate_questions
from bench.questions import read_jsonl
from qa.assemble import embedder_from_settings, spec_from_settings
from qa.embedder import Embedder
from qa.engine import Engine
from qa.evaluation import index_for, load_dataset, run_queries, trec_metrics
from qa.index import load_current
from qa.index.snapshot import SentenceSet, Snapshot
from qa.search import FusionConfig, Hit, Searcher, span_text


def quantize(vectors: np.ndarray, bits: int) -> np.ndarray:
    """``vectors`` (n, dim) through symmetric scalar codes of ``bits`` bits, one scale a
    row, decoded back to float32 (what a search would read from stored codes)."""
    levels = 2 ** (bits - 1) - 1  # 127 for 8 bits, 7 for 4
    scale = np.abs(vectors).max(axis=1, keepdims=True) / levels
    scale[scale == 0] = 1.0
    out: np.ndarray = (np.round(vectors / scale) * scale).astype(np.float32)
    return out


class CodedSentences:
    """A snapshot whose sentence vectors are read through ``bits``-bit codes."""

    def __init__(self, inner: Snapshot, bits: int) -> None:
        self._inner = inner
        self._bits = bits

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)

    def sentences(self, ids: np.ndarray) -> SentenceSet:
        s = self._inner.sentences(ids)
        return SentenceSet(s.owner, s.spans, quantize(np.asarray(s.vectors), self._bits))


class SeparateSentences(CodedSentences):
    """A snapshot whose sentences are embedded each on its own when asked for (memoised)."""

    def __init__(self, inner: Snapshot, embedder: Embedder) -> None:
        super().__init__(inner, 0)
        self._embedder = embedder
        self._memo: dict[tuple[str, int, int], np.ndarray] = {}

    def sentences(self, ids: np.ndarray) -> SentenceSet:
        s = self._inner.sentences(ids)
        chunks = self._inner.chunks(ids)
        keys = [
            (chunks[int(o)].doc_id, int(a), int(b))
            for o, (a, b) in zip(s.owner, s.spans, strict=True)
        ]
        todo = {k: i for i, k in enumerate(keys) if k not in self._memo}
        if todo:
            texts = [
                span_text(self._inner, chunks[int(s.owner[i])], k[1], k[2]) for k, i in todo.items()
            ]
            for k, v in zip(todo, self._embedder.embed(texts), strict=True):
                self._memo[k] = v
        vectors = np.asarray([self._memo[k] for k in keys], dtype=np.float32)
        return SentenceSet(s.owner, s.spans, vectors.reshape(len(keys), -1))


class HighlightFrom(Searcher):
    """A searcher that ranks with its snapshot but highlights with ``shown``'s sentences."""

    def __init__(self, data: Snapshot, shown: Snapshot, candidates: int) -> None:
        super().__init__(data, candidates, FusionConfig())
        self.shown = shown

    def _highlight(
        self, query: str, vector: np.ndarray, hits: list[Hit], sentences: SentenceSet
    ) -> None:
        ids = np.asarray([h.id for h in hits], dtype=np.int64)
        super()._highlight(query, vector, hits, self.shown.sentences(ids))


def first_hits(searcher: Searcher, embedder: Embedder, queries: list[str], k: int) -> list[Any]:
    """(first hit's highlight span, confidence) of each query, as Engine.ask computes the
    confidence (best of chunk and highlighted sentence cosine over the hits)."""
    out = []
    for q in queries:
        hits = searcher.search(q, embedder.embed([q])[0], k)
        confidence = max((max(h.dense, h.highlight_dense) for h in hits), default=-1.0)
        out.append(((hits[0].id, hits[0].highlight) if hits else None, confidence))
    return out


def beir_rows(settings: Any, names: set[str] | None, top_k: int) -> list[str]:
    embedder = embedder_from_settings(settings)
    spec = spec_from_settings(settings)
    rows = []
    for path in beir_sets():
        if names and path.name not in names:
            continue
        dataset = load_dataset(path)
        index_dir = index_for(dataset, Path(settings.cache_dir), embedder, spec)
        built = load_current(index_dir, spec)
        queries = list(dataset.queries.values())
        cand = max(settings.candidates, 300)
        separate = SeparateSentences(built, embedder)
        reference = first_hits(HighlightFrom(built, separate, cand), embedder, queries, top_k)
        variants: dict[str, Snapshot] = {"as built": built}
        variants |= {f"{b}-bit codes": CodedSentences(built, b) for b in (8, 4)}  # type: ignore[misc]
        for name, data in variants.items():
            searcher = Searcher(data, cand, FusionConfig())
            run, _ = run_queries(searcher, embedder, dataset.queries)
            ndcg = trec_metrics(dataset.qrels, run)["ndcg@10"]
            got = first_hits(
                Searcher(data, settings.candidates, FusionConfig()), embedder, queries, top_k
            )
            same = sum(a[0] == b[0] for a, b in zip(got, reference, strict=True))
            conf = [c for _, c in got]
            rows.append(
                f"| {path.name} | {name} | {ndcg:.3f} | {same}/{len(queries)} | "
                f"{statistics.median(conf):.3f} | "
                f"{sum(c < settings.min_score for c in conf)}/{len(conf)} |"
            )
        conf = [c for _, c in reference]
        rows.append(
            f"| {path.name} | separate sentences shown | (as built) | {len(queries)}/"
            f"{len(queries)} | {statistics.median(conf):.3f} | "
            f"{sum(c < settings.min_score for c in conf)}/{len(conf)} |"
        )
    return rows


def article_rows(settings: Any) -> list[str]:
    questions = read_jsonl(ROOT / "eval" / "nato" / "questions.jsonl")
    offtopic = read_jsonl(ROOT / "eval" / "nato" / "offtopic.jsonl")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engine: Engine = nato_engine(settings, Path(tmp))
        built = engine.data
        for name, data in [
            ("as built", built),
            *((f"{b}-bit codes", CodedSentences(built, b)) for b in (8, 4)),
        ]:
            engine.install(data)  # type: ignore[arg-type]
            r = evaluate_questions(engine, questions, offtopic)
            rows.append(
                f"| {name} | {r['rank1']:.3f} | {r['top3']:.3f} | {r['mrr']:.3f} | "
                f"{r['highlight_has_evidence']:.3f} | {r['on_topic_abstained']}/"
                f"{r['questions']} | {r['offtopic_abstained']}/{r['offtopic']} |"
            )
    return rows


def main() -> None:
    from qa.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="", help="comma-separated BEIR set names (all)")
    parser.add_argument("--top-k", type=int, default=5, help="hits shown per question")
    parser.add_argument("--no-article", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    began = time.perf_counter()
    names = {n for n in args.sets.split(",") if n} or None
    parts = [
        f"`python -m bench.sentences` (embedding {spec_from_settings(settings).embedding}, "
        f"hybrid, top {args.top_k} shown)",
        "",
        "| set | sentence vectors | nDCG@10 | first hit's highlight as with separate "
        "sentences | median confidence | answerable that abstain |",
        "|---|---|---|---|---|---|",
        *beir_rows(settings, names, args.top_k),
    ]
    if not args.no_article:
        parts += [
            "",
            "| default article | rank 1 | top 3 | MRR | highlight has evidence "
            "| on-topic abstained | off-topic abstained |",
            "|---|---|---|---|---|---|---|",
            *article_rows(settings),
        ]
    print("\n".join(parts))
    print(f"bench.sentences took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
