"""Search: dense (FAISS) and BM25 candidates fused into one ranking, near-duplicates removed.

The ranking itself is ``qa.fusion.fuse`` (pure functions over arrays of candidate scores):
a convex combination of the theoretically normalised cosine and BM25 plus an
exact-identifier score, with the best sentence ordering the chunks of one document. Its
parameters were chosen by leave-one-set-out over the BEIR-form sets (``bench/fusion.py``,
docs/quality.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qa.documents import Chunk
from qa.fusion import FusionConfig as FusionConfig  # re-exported: callers import it from here
from qa.fusion import blend, familiarity, fuse
from qa.index.snapshot import Filters, Scored, SentenceSet, Snapshot
from qa.lexical import term_sets, tokenize


@dataclass
class Hit:
    """One ranked chunk: its stable id, the chunk, its fused score and the parts of it,
    and the span (document offsets) of the sentence that best answers."""

    id: int
    chunk: Chunk
    score: float
    dense: float
    lexical: float
    highlight: tuple[int, int]
    highlight_dense: float


class Searcher:
    """Ranks the chunks of one index generation (a ``Snapshot``) for a query vector and
    text. It asks the snapshot for candidates by id and scores them; it never reads the
    store's arrays itself."""

    def __init__(
        self, snapshot: Snapshot, candidates: int = 100, fusion: FusionConfig | None = None
    ) -> None:
        self.data = snapshot
        self.candidates = candidates
        self.fusion = fusion or FusionConfig()
        self.familiarity = familiarity(snapshot.word_pieces_per_word, self.fusion)

    def search(
        self,
        query: str,
        vector: np.ndarray,
        top_k: int,
        filters: Filters | None = None,
        *,
        highlight: bool = True,
        dedupe: bool = True,
    ) -> list[Hit]:
        """The ``top_k`` best chunks for ``query`` and its unit vector (dim,), best first,
        near-duplicates of a better hit removed."""
        snap, cfg = self.data, self.fusion
        if filters is not None and not filters.active:
            filters = None
        pool = snap.count(filters)
        if pool == 0:
            return []
        c = min(self.candidates, pool)
        rank_vector = self.feedback_vector(vector, filters, pool)
        dense_ids = snap.dense(rank_vector, c, filters).ids
        lex_ids = np.zeros(0, dtype=np.int64)
        if cfg.mode != "dense":
            lex_ids = snap.lexical(query, c, filters).ids
        exact = Scored.empty()
        if cfg.mode == "hybrid" and cfg.exact_weight:
            exact = snap.exact(query, filters)
        # in id order, so that ties rank the same wherever the chunks are stored; in hybrid,
        # every chunk holding one of the question's identifiers is a candidate
        if cfg.mode == "dense":
            ids = np.unique(dense_ids)
        elif cfg.mode == "bm25":
            ids = np.unique(lex_ids)
        else:
            ids = np.unique(np.concatenate([dense_ids, lex_ids, exact.ids]))
        if len(ids) == 0:
            return []
        # each chunk's vector and sentences read once (dense_scores reads them per call)
        vectors = snap.chunk_vectors(ids)
        sents = snap.sentences(ids)
        dense: np.ndarray = vectors @ rank_vector
        sentence = self._with_sentences(dense, sents, rank_vector, 1.0)
        plain = dense if rank_vector is vector else vectors @ vector
        lex = (
            snap.lexical_scores(query, ids)
            if cfg.mode != "dense"
            else np.zeros(len(ids), dtype=np.float32)
        )
        exact_values = np.zeros(len(ids), dtype=np.float32)
        if len(exact.ids):
            where = {int(i): j for j, i in enumerate(ids)}
            for i, value in zip(exact.ids, exact.scores, strict=True):
                exact_values[where[int(i)]] = value
        # documents and spans as columns: ``Chunk`` objects are made for the hits only
        doc_labels, spans = snap.chunk_places(ids)
        docs = np.unique(doc_labels, return_inverse=True)[1]
        known = self.familiarity
        fused = fuse(dense, lex, exact_values, cfg, known, sentence=sentence, documents=docs)
        order = np.argsort(-fused, kind="stable")
        picked: list[int] = []
        chosen: list[tuple[int, int, int]] = []
        labels, starts, ends = doc_labels.tolist(), spans[:, 0].tolist(), spans[:, 1].tolist()
        for j in order.tolist():
            doc, start, end = labels[j], starts[j], ends[j]
            if dedupe and self._overlaps(doc, start, end, chosen):
                continue
            chosen.append((doc, start, end))
            picked.append(j)
            if len(picked) >= top_k:
                break
        chunks = snap.chunks(ids[picked])
        hits = [
            Hit(int(ids[j]), chunk, float(fused[j]), float(plain[j]), float(lex[j]), (0, 0), 0.0)
            for j, chunk in zip(picked, chunks, strict=True)
        ]
        if highlight:
            self._highlight(query, vector, hits, _subset(sents, picked))
        return hits

    def feedback_vector(self, vector: np.ndarray, filters: Filters | None, pool: int) -> np.ndarray:
        """Rocchio pseudo-relevance feedback: move the query toward its top chunks."""
        cfg = self.fusion
        if cfg.mode == "bm25" or cfg.prf_k <= 0 or pool < cfg.prf_min_chunks:
            return vector
        if self.familiarity < 0.5:  # the model's top hits are not evidence to expand with
            return vector
        seeds = self.data.dense(vector, cfg.prf_k, filters).ids
        expanded = vector + cfg.prf_beta * self.data.chunk_vectors(seeds).mean(axis=0)
        out: np.ndarray = (expanded / np.linalg.norm(expanded)).astype(np.float32)
        return out

    def dense_scores(self, ids: np.ndarray, vector: np.ndarray, weight: float) -> np.ndarray:
        """Cosine of each chunk, blended with the cosine of its best-matching sentence:
        ``(1 - weight) * chunk + weight * best sentence`` (0 gives the chunk's cosine, 1 its
        best sentence's, the chunk's own for a chunk without sentences). Shape (len(ids),)."""
        chunk_cos: np.ndarray = self.data.chunk_vectors(ids) @ vector
        if weight <= 0:
            return chunk_cos
        return self._with_sentences(chunk_cos, self.data.sentences(ids), vector, weight)

    @staticmethod
    def _with_sentences(
        chunk_cos: np.ndarray, sentences: SentenceSet, vector: np.ndarray, weight: float
    ) -> np.ndarray:
        """``dense_scores`` from the chunks' cosines (m,) and their sentences."""
        if len(sentences.owner) == 0:
            return chunk_cos
        sent_cos = sentences.vectors @ vector
        best = chunk_cos.copy()  # a chunk without sentences keeps its own cosine
        has = np.zeros(len(chunk_cos), dtype=bool)
        has[sentences.owner] = True
        best[has] = -np.inf
        np.maximum.at(best, sentences.owner, sent_cos)
        return blend(chunk_cos, best, weight)

    def _overlaps(
        self, doc_id: object, start: int, end: int, chosen: Sequence[tuple[object, int, int]]
    ) -> bool:
        for d, s, e in chosen:
            if d != doc_id:
                continue
            shared = min(e, end) - max(s, start)
            if shared > 0 and shared >= self.fusion.dedupe_overlap * min(e - s, end - start):
                return True
        return False

    def highlight(self, query: str, vector: np.ndarray, hits: list[Hit]) -> None:
        """Pick in each hit the sentence that best answers: cosine plus shared query terms.
        A hit without sentences (a chunk of headings only) highlights the whole chunk."""
        if hits:
            ids = np.asarray([h.id for h in hits], dtype=np.int64)
            self._highlight(query, vector, hits, self.data.sentences(ids))

    def _highlight(
        self, query: str, vector: np.ndarray, hits: list[Hit], sentences: SentenceSet
    ) -> None:
        """``highlight`` with the hits' sentences given (owner: position in ``hits``)."""
        for hit in hits:
            hit.highlight, hit.highlight_dense = (hit.chunk.start, hit.chunk.end), hit.dense
        if not hits or len(sentences.owner) == 0:
            return
        spans, owner = sentences.spans, sentences.owner
        cos = sentences.vectors @ vector
        texts = [
            span_text(self.data, hits[int(h)].chunk, int(s), int(e))
            for h, (s, e) in zip(owner, spans, strict=True)
        ]
        q_terms = set(tokenize([query])[0])
        overlap = np.zeros(len(owner), dtype=np.float32)
        if q_terms:
            for i, terms in enumerate(term_sets(texts)):
                overlap[i] = len(q_terms.intersection(terms)) / len(q_terms)
        score = cos + 0.2 * overlap
        best: dict[int, int] = {}
        for i, h in enumerate(owner.tolist()):
            if h not in best or score[i] > score[best[h]]:
                best[h] = i
        for h, i in best.items():
            hits[h].highlight = (int(spans[i, 0]), int(spans[i, 1]))
            hits[h].highlight_dense = float(cos[i])


def _subset(sentences: SentenceSet, picked: list[int]) -> SentenceSet:
    """The sentences of the chunks at positions ``picked`` (of the ids ``sentences`` was
    read for), owners renumbered to positions in ``picked``: the rows ``sentences(ids[picked])``
    would give, in the same order, without reading them again."""
    where = [np.flatnonzero(sentences.owner == j) for j in picked]
    rows = np.concatenate([np.zeros(0, dtype=np.int64), *where])
    owner = np.repeat(np.arange(len(picked), dtype=np.int64), [len(w) for w in where])
    return SentenceSet(owner, sentences.spans[rows], sentences.vectors[rows])


def span_text(snapshot: Snapshot, chunk: Chunk, start: int, end: int) -> str:
    """The document text of ``[start, end)``: from the chunk when the span lies inside it
    (a sentence of the chunk), else from the document."""
    if chunk.start <= start and end <= chunk.end:
        return chunk.text[start - chunk.start : end - chunk.start]
    doc = snapshot.document(chunk.doc_id)
    return doc.text[start:end] if doc is not None else ""
