"""Search: dense (FAISS) and BM25 candidates fused into one ranking, near-duplicates removed.

Fusion is a convex combination of normalised scores plus an exact-identifier score:
``(1 - w) * dense_minmax + w * bm25 / best_bm25 + exact_weight * exact``. The BM25 share
``w`` moves toward the retriever whose top hit stands out more (the gap rule) and toward
BM25 on a corpus in a language the model does not know; ``exact`` is the rarity of the
question's identifiers that a chunk holds verbatim (``qa.lexical.IdentifierIndex``). The
constants were measured by leave-one-set-out over six BEIR-form sets (``bench/fusion.py``,
docs/quality.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qa.index import IndexData
from qa.lexical import IdentifierIndex, tokenize
from qa.normalize import nfc


@dataclass(frozen=True)
class Filters:
    doc_ids: frozenset[str] | None = None
    path_prefix: str | None = None

    @property
    def active(self) -> bool:
        return self.doc_ids is not None or bool(self.path_prefix)

    def allows(self, doc_id: str, path: str) -> bool:
        """Ids and the path prefix compare in NFC (filters_from gives NFC values)."""
        if self.doc_ids is not None and nfc(doc_id) not in self.doc_ids:
            return False
        return not (self.path_prefix and not nfc(path).startswith(self.path_prefix))


@dataclass(frozen=True)
class FusionConfig:
    mode: str = "hybrid"  # hybrid | dense | bm25
    lexical_weight: float = 0.2  # BM25 share of the fused score
    exact_weight: float = 0.5  # weight of the exact-identifier score added to the fused score
    dedupe_overlap: float = 0.5  # drop a hit sharing this share of a better hit's span
    gap_gain: float = 0.5  # shift weight toward the retriever whose top hit stands out more
    sentence_weight: float = 0.5  # share of the best sentence's cosine in a chunk's dense score
    prf_k: int = 10  # pseudo-relevance feedback: top chunks averaged into the query vector
    prf_beta: float = 0.3  # weight of their mean vector
    prf_min_chunks: int = 200  # no feedback on smaller corpora: their top k is not a signal
    language_rule: bool = True  # lean on BM25 for a corpus the tokenizer shreds (word pieces)
    familiar_wppw: float = 1.3  # word pieces per word of a corpus in the model's language
    foreign_wppw: float = 2.0  # ... and of one in a language the model does not know


@dataclass
class Hit:
    row: int
    score: float
    dense: float
    lexical: float
    highlight: tuple[int, int]
    highlight_dense: float


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _gap(normalised: np.ndarray) -> float:
    """How far the best score stands above the runner-up, on a [0, 1] scale."""
    top2 = np.sort(normalised)[-2:]
    return float(top2[1] - top2[0])


def familiarity(word_pieces_per_word: float, config: FusionConfig) -> float:
    """1 for a corpus in the model's language, falling to 0 as its tokenizer shreds it."""
    if not config.language_rule:
        return 1.0
    lo, hi = config.familiar_wppw, config.foreign_wppw
    return float(np.clip((hi - word_pieces_per_word) / (hi - lo), 0.0, 1.0))


def lexical_weight(config: FusionConfig, known: float = 1.0) -> float:
    """BM25's share before the gap rule: ``lexical_weight`` for a corpus in the model's
    language, sliding to 0.8 as the corpus gets foreign to it (``known`` from 1 to 0)."""
    return 0.8 + known * (config.lexical_weight - 0.8)


def _minmax(scores: np.ndarray) -> np.ndarray:
    """Scores mapped onto [0, 1] over the candidates (all 1 when they are equal)."""
    lo, hi = float(scores.min()), float(scores.max())
    out: np.ndarray = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    return out


def fuse(
    dense: np.ndarray,
    lexical: np.ndarray,
    exact: np.ndarray,
    config: FusionConfig,
    known: float = 1.0,
) -> np.ndarray:
    """Fused score of each candidate chunk (higher is better), shape (n,).

    ``dense``: the dense score used for ranking (with feedback), ``lexical``: BM25 (0 where
    no term matches), ``exact``: the exact-identifier score (``IdentifierIndex.match``),
    all shape (n,);
    ``known``: the corpus's familiarity to the model (``familiarity``).
    """
    if config.mode == "dense":
        return dense
    lex_max = float(lexical.max()) if len(lexical) else 0.0
    if config.mode == "bm25":
        return lexical / lex_max if lex_max > 0 else np.zeros_like(lexical)
    dense_n = _minmax(dense)
    if lex_max <= 0:
        fused = dense_n
    else:
        lex_n = lexical / lex_max
        w = lexical_weight(config, known)
        if config.gap_gain and len(dense) > 1:
            w = float(np.clip(w + config.gap_gain * (_gap(lex_n) - _gap(dense_n)), 0.05, 0.8))
        fused = (1 - w) * dense_n + w * lex_n
    if config.exact_weight:
        fused = fused + config.exact_weight * exact
    return fused


class Searcher:
    """Ranks the chunks of one loaded index generation for a query vector and text."""

    def __init__(
        self, data: IndexData, candidates: int = 100, fusion: FusionConfig | None = None
    ) -> None:
        self.data = data
        self.candidates = candidates
        self.fusion = fusion or FusionConfig()
        self.familiarity = familiarity(data.word_pieces_per_word, self.fusion)
        self._paths = [data.documents[c.doc_id].path for c in data.chunks]
        self.identifiers = IdentifierIndex([c.text for c in data.chunks])

    def _allowed_rows(self, filters: Filters) -> np.ndarray:
        return np.array(
            [i for i, c in enumerate(self.data.chunks) if filters.allows(c.doc_id, self._paths[i])],
            dtype=np.int64,
        )

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
        data, cfg = self.data, self.fusion
        n = len(data.chunks)
        if n == 0:
            return []
        c = min(self.candidates, n)
        lexical = data.bm25.scores(query) if cfg.mode != "dense" else np.zeros(n, np.float32)
        exact = np.zeros(n, dtype=np.float32)
        exact_rows = np.zeros(0, dtype=np.int64)
        if cfg.mode == "hybrid" and cfg.exact_weight:
            exact_rows, values = self.identifiers.match(query)
            exact[exact_rows] = values
        allowed: np.ndarray | None = None
        mask = None
        if filters is not None and filters.active:
            allowed = self._allowed_rows(filters)
            if len(allowed) == 0:
                return []
            mask = np.zeros(n, dtype=bool)
            mask[allowed] = True
            lexical = np.where(mask, lexical, 0.0).astype(np.float32)
            exact_rows = exact_rows[mask[exact_rows]]
        rank_vector = self.feedback_vector(vector, allowed)
        dense_rows = self.dense_top(rank_vector, c, allowed)
        lex_rows = _top(lexical, c)
        lex_rows = lex_rows[lexical[lex_rows] > 0]
        if mask is not None:
            lex_rows = lex_rows[mask[lex_rows]]
        if cfg.mode == "dense":
            rows = dense_rows
        elif cfg.mode == "bm25":
            rows = lex_rows if len(lex_rows) else dense_rows[:0]
        else:
            # every chunk holding one of the question's identifiers is a candidate
            rows = np.unique(np.concatenate([dense_rows, lex_rows, exact_rows]))
        if len(rows) == 0:
            return []
        dense = self.dense_scores(rows, rank_vector)
        plain = dense if rank_vector is vector else self.dense_scores(rows, vector)
        lex = lexical[rows]
        fused = fuse(dense, lex, exact[rows], cfg, self.familiarity)
        order = np.argsort(-fused, kind="stable")
        hits: list[Hit] = []
        chosen: list[tuple[str, int, int]] = []
        for j in order:
            row = int(rows[j])
            chunk = data.chunks[row]
            if dedupe and self._overlaps(chunk.doc_id, chunk.start, chunk.end, chosen):
                continue
            chosen.append((chunk.doc_id, chunk.start, chunk.end))
            hits.append(Hit(row, float(fused[j]), float(plain[j]), float(lex[j]), (0, 0), 0.0))
            if len(hits) >= top_k:
                break
        if highlight:
            self._highlight(query, vector, hits)
        return hits

    def dense_top(self, vector: np.ndarray, k: int, allowed: np.ndarray | None) -> np.ndarray:
        if allowed is None:
            rows: np.ndarray = self.data.store.search(vector, k)[0]
            return rows
        picked: np.ndarray = allowed[_top(self.data.chunk_vectors[allowed] @ vector, k)]
        return picked

    def feedback_vector(self, vector: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        """Rocchio pseudo-relevance feedback: move the query toward its top chunks."""
        cfg = self.fusion
        pool = len(self.data.chunks) if allowed is None else len(allowed)
        if cfg.mode == "bm25" or cfg.prf_k <= 0 or pool < cfg.prf_min_chunks:
            return vector
        if self.familiarity < 0.5:  # the model's top hits are not evidence to expand with
            return vector
        seeds = self.dense_top(vector, cfg.prf_k, allowed)
        expanded = vector + cfg.prf_beta * self.data.chunk_vectors[seeds].mean(axis=0)
        out: np.ndarray = (expanded / np.linalg.norm(expanded)).astype(np.float32)
        return out

    def dense_scores(self, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Cosine of each chunk, blended with the cosine of its best-matching sentence."""
        data = self.data
        chunk_cos: np.ndarray = data.chunk_vectors[rows] @ vector
        weight = self.fusion.sentence_weight
        if weight <= 0 or len(data.sentences) == 0:
            return chunk_cos
        ranges = data.chunk_sentence_ranges[rows]
        sizes = ranges[:, 1] - ranges[:, 0]
        has = sizes > 0
        if not has.any():
            return chunk_cos
        sizes, starts = sizes[has], ranges[has, 0]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        sent_rows = np.arange(int(sizes.sum())) + np.repeat(starts - offsets, sizes)
        sent_cos = data.sentence_vectors[sent_rows] @ vector
        best = chunk_cos.copy()
        best[has] = np.maximum.reduceat(sent_cos, offsets)
        blended: np.ndarray = (1 - weight) * chunk_cos + weight * best
        return blended

    def _overlaps(
        self, doc_id: str, start: int, end: int, chosen: Sequence[tuple[str, int, int]]
    ) -> bool:
        for d, s, e in chosen:
            if d != doc_id:
                continue
            shared = min(e, end) - max(s, start)
            if shared > 0 and shared >= self.fusion.dedupe_overlap * min(e - s, end - start):
                return True
        return False

    def _highlight(self, query: str, vector: np.ndarray, hits: list[Hit]) -> None:
        """Pick in each hit the sentence that best answers: cosine plus shared query terms.
        A hit without sentences (a chunk of headings only) highlights the whole chunk."""
        data = self.data
        owner: list[int] = []  # hit index of each candidate sentence
        rows: list[int] = []  # its row in the sentence table
        for h, hit in enumerate(hits):
            lo, hi = data.chunk_sentence_ranges[hit.row]
            owner.extend([h] * int(hi - lo))
            rows.extend(range(int(lo), int(hi)))
        for hit in hits:
            chunk = data.chunks[hit.row]
            hit.highlight, hit.highlight_dense = (chunk.start, chunk.end), hit.dense
        if not rows:
            return
        spans = data.sentences[rows]
        cos = data.sentence_vectors[rows] @ vector
        texts = [
            data.documents[data.chunks[int(row)].doc_id].text[int(start) : int(end)]
            for row, start, end in spans
        ]
        q_terms = set(tokenize([query])[0])
        overlap = np.zeros(len(rows), dtype=np.float32)
        if q_terms:
            for i, terms in enumerate(tokenize(texts)):
                overlap[i] = len(q_terms.intersection(terms)) / len(q_terms)
        score = cos + 0.2 * overlap
        best: dict[int, int] = {}
        for i, h in enumerate(owner):
            if h not in best or score[i] > score[best[h]]:
                best[h] = i
        for h, i in best.items():
            hits[h].highlight = (int(spans[i, 1]), int(spans[i, 2]))
            hits[h].highlight_dense = float(cos[i])
