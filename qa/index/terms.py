"""BM25 over index segments: term frequencies stored per segment, scored at query time.

bm25s precomputes every (term, chunk) score with the corpus-wide IDF and average length
baked in, so an index kept as segments (qa.index.segment: an update writes only the chunks
that changed) cannot be scored from per-segment bm25s indexes: each would have its own IDF.
A segment stores instead what BM25 is made of: the term frequencies of its chunks (a CSC
matrix: terms x chunks) and each chunk's length; the scorer sums, per query term, over the
live chunks of every segment, with the statistics of the live chunks of the generation.
The result equals a fresh bm25s index of the same chunks (tested): the same tokens
(qa.lexical.tokenize) and the same formula, bm25s's default "lucene" variant
(Kamphuis et al., ECIR 2020: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
tf / (tf + k1 * (1 - b + b * dl / avgdl)), k1 = 1.5, b = 0.75).

A query reads only its terms' postings: :meth:`SegmentedBM25.top` finds the k best
without scoring or scanning every row (1M chunks: bench/scale.py, docs/performance.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qa.lexical import term_counts, tokenize

K1 = 1.5
B = 0.75
FILES = ("terms.json", "tf_indptr.npy", "tf_rows.npy", "tf_counts.npy", "lengths.npy")


@dataclass
class TermCounts:
    """Term frequencies of one segment's chunks: for term id t, ``rows[indptr[t]:indptr[t+1]]``
    are the chunks (segment rows) holding it and ``counts`` how often; ``lengths`` (n,) is
    each chunk's number of tokens."""

    vocab: dict[str, int]
    indptr: np.ndarray  # (n_terms + 1,) int64
    rows: np.ndarray  # (nnz,) int32
    counts: np.ndarray  # (nnz,) uint16 (float32 if a chunk holds a term 65,536+ times)
    lengths: np.ndarray  # (n_chunks,) float32

    @classmethod
    def build(cls, texts: Sequence[str]) -> TermCounts:
        """Counted in batches of token ids, in two passes through a temporary file so
        that the (term, chunk) pairs are held once (qa.lexical.term_counts); 1M chunks:
        docs/performance.md."""
        return cls(*term_counts(texts))

    def save(self, path: Path) -> None:
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        (path / "terms.json").write_text(json.dumps(terms, ensure_ascii=False), "utf-8")
        for name, array in (
            ("tf_indptr", self.indptr),
            ("tf_rows", self.rows),
            ("tf_counts", self.counts),
            ("lengths", self.lengths),
        ):
            np.save(path / f"{name}.npy", array, allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> TermCounts:
        terms = json.loads((path / "terms.json").read_text("utf-8"))
        # memory-mapped: the pages are the files', shared by every process serving them
        return cls(
            {t: i for i, t in enumerate(terms)},
            np.load(path / "tf_indptr.npy", allow_pickle=False, mmap_mode="r"),
            np.load(path / "tf_rows.npy", allow_pickle=False, mmap_mode="r"),
            np.load(path / "tf_counts.npy", allow_pickle=False, mmap_mode="r"),
            np.load(path / "lengths.npy", allow_pickle=False, mmap_mode="r"),
        )

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(segment rows, term frequency) of the chunks holding ``term``."""
        tid = self.vocab.get(term)
        if tid is None:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        lo, hi = int(self.indptr[tid]), int(self.indptr[tid + 1])
        return self.rows[lo:hi], self.counts[lo:hi]


class SegmentedBM25:
    """BM25 of a query for the chunks of a generation made of segments.

    ``parts``: (term counts, live mask (n_i,) bool, offset of the segment's first row in the
    generation's row order) of each segment; dead rows (chunks of a removed or changed
    document) neither score nor count in the statistics. ``size``: rows in the generation.

    A query costs what its terms' postings hold: :meth:`matches` and :meth:`top` touch only
    the chunks holding a query term; :meth:`scores` also writes a dense (size,) array. All
    three give the same float32 scores, bit for bit (each row's terms added in query order).
    """

    # below size / _SPARSE pairs a query's candidates are found by sorting its postings
    # (cost independent of size); above, through a zeroed (size,) array (see _candidates)
    _SPARSE = 128

    def __init__(self, parts: list[tuple[TermCounts, np.ndarray, int]], size: int) -> None:
        self.parts = sorted(parts, key=lambda part: part[2])  # rows ascending across parts
        self.size = size
        self.live_chunks = int(sum(int(live.sum()) for _, live, _ in parts))
        total = sum(float(tc.lengths[live].sum()) for tc, live, _ in parts)
        self.avgdl = total / self.live_chunks if self.live_chunks else 1.0
        # per part: the length normalisation of every row, and whether every row is live
        self._norms = [
            K1 * ((1 - B) + B * np.asarray(tc.lengths, dtype=np.float32) / self.avgdl)
            for tc, _, _ in self.parts
        ]
        self._all_live = [bool(live.all()) for _, live, _ in self.parts]
        self._last = threading.local()  # (query, its term postings) of this thread's last

    def _term(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows int64 ascending, BM25 of ``term`` there float32) over the live chunks."""
        found = []
        for (tc, live, offset), all_live, norm in zip(
            self.parts, self._all_live, self._norms, strict=True
        ):
            rows, tf = tc.postings(term)
            if len(rows) and not all_live:
                keep = live[rows]
                rows, tf = rows[keep], tf[keep]
            if len(rows):
                found.append((rows, tf, norm, offset))
        df = sum(len(f[0]) for f in found)
        if df == 0:
            return None
        idf = np.log(1.0 + (self.live_chunks - df + 0.5) / (df + 0.5))
        out_rows, out_scores = [], []
        for rows, tf, norm, offset in found:
            tf = np.asarray(tf, dtype=np.float32)
            out_scores.append((idf * tf / (tf + norm[rows])).astype(np.float32))
            out_rows.append(rows.astype(np.int64) + offset)
        if len(found) == 1:
            return out_rows[0], out_scores[0]
        return np.concatenate(out_rows), np.concatenate(out_scores)

    def _postings(self, query: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`_term` of each query term found, in query order (a repeated query term
        counts again, as in bm25s); the last query's are kept, one per thread."""
        last = getattr(self._last, "value", None)
        if last is not None and last[0] == query:
            cached: list[tuple[np.ndarray, np.ndarray]] = last[1]
            return cached
        out: list[tuple[np.ndarray, np.ndarray]] = []
        if self.live_chunks:
            seen: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
            for term in tokenize([query])[0]:
                if term not in seen:
                    seen[term] = self._term(term)
                found = seen[term]
                if found is not None:
                    out.append(found)
        self._last.value = (query, out)
        return out

    def scores(self, query: str) -> np.ndarray:
        """BM25 score (float32 (size,)) of every row for ``query``; 0 where no term matches."""
        out = np.zeros(self.size, dtype=np.float32)
        for rows, values in self._postings(query):
            out[rows] += values
        return out

    def _candidates(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, each once; their scores float32) of the live chunks holding a
        query term, each row's terms added in query order as :meth:`scores` does. Few
        pairs (under size / 128): the postings' rows sorted and made unique, each term's
        scores added at its rows' places (found by binary search). More: the scores added
        into a zeroed (size,) array (one memset, 4 MB at 1M chunks) and read back at the
        rows of the postings only, never scanned whole."""
        postings = self._postings(query)
        if not postings:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if len(postings) == 1:
            return postings[0]
        if sum(len(rows) for rows, _ in postings) * self._SPARSE < self.size:
            found = np.concatenate([rows for rows, _ in postings])
            found.sort()  # then each row once (np.unique hashes: slower here)
            found = found[np.concatenate([[True], found[1:] != found[:-1]])]
            scores = np.zeros(len(found), dtype=np.float32)
            for rows, values in postings:
                scores[np.searchsorted(found, rows)] += values
            return found, scores
        dense = np.zeros(self.size, dtype=np.float32)
        fresh = []
        for rows, values in postings:
            fresh.append(rows[dense[rows] == 0])  # not in an earlier term's (scores are > 0)
            dense[rows] += values
        found = np.concatenate(fresh)
        return found, dense[found]

    def matches(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64 ascending, score float32 > 0) of the live chunks holding a query
        term: ``scores(query)`` where it is not 0, without reading the other rows."""
        rows, values = self._candidates(query)
        order = np.argsort(rows)
        return rows[order], values[order]

    def top(
        self, query: str, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, scores float32) of the ``k`` best-scoring live chunks holding a
        query term, best first; ties in row order (the lower row first, also for which of
        several tied at the k-th place are kept). ``allowed``: a (size,) bool mask of the
        rows that may be returned, or None for all. The same as sorting ``scores(query)``
        by (-score, row) and keeping the first ``k`` with a score > 0 (tested), at the cost
        of the query terms' postings (:meth:`_candidates`) and a partition of them."""
        rows, values = self._candidates(query)
        if allowed is not None and len(rows):
            keep = allowed[rows]
            rows, values = rows[keep], values[keep]
        if k <= 0 or len(rows) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if len(rows) > k:
            kth = np.partition(values, len(values) - k)[len(values) - k]
            above = np.flatnonzero(values > kth)
            tied = np.flatnonzero(values == kth)
            tied = tied[np.argsort(rows[tied], kind="stable")][: k - len(above)]
            picked = np.concatenate([above, tied])
            rows, values = rows[picked], values[picked]
        order = np.lexsort((rows, -values))
        return rows[order], values[order]

    def scores_of(self, query: str, rows: np.ndarray) -> np.ndarray:
        """``scores(query)[rows]`` (float32 (len(rows),)) without the dense array: a binary
        search of ``rows`` in each query term's postings."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.float32)
        for term_rows, values in self._postings(query):
            at = np.searchsorted(term_rows, rows)
            inside = at < len(term_rows)
            hit = np.zeros(len(rows), dtype=bool)
            hit[inside] = term_rows[at[inside]] == rows[inside]
            out[hit] += values[at[hit]]
        return out
