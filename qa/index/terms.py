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
"""

from __future__ import annotations

import json
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
    counts: np.ndarray  # (nnz,) float32
    lengths: np.ndarray  # (n_chunks,) float32

    @classmethod
    def build(cls, texts: Sequence[str]) -> TermCounts:
        """Counted in batches of token ids (qa.lexical.term_counts): 1M chunks in well
        under the time and memory of a Python Counter a chunk (docs/performance.md)."""
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
    """BM25 of a query for every chunk of a generation made of segments.

    ``parts``: (term counts, live mask (n_i,) bool, offset of the segment's first row in the
    generation's row order) of each segment; dead rows (chunks of a removed or changed
    document) neither score nor count in the statistics."""

    def __init__(self, parts: list[tuple[TermCounts, np.ndarray, int]], size: int) -> None:
        self.parts = parts
        self.size = size
        self.live_chunks = int(sum(int(live.sum()) for _, live, _ in parts))
        total = sum(float(tc.lengths[live].sum()) for tc, live, _ in parts)
        self.avgdl = total / self.live_chunks if self.live_chunks else 1.0

    def scores(self, query: str) -> np.ndarray:
        """BM25 score (float32) of every row for ``query``; 0 where no term matches."""
        out = np.zeros(self.size, dtype=np.float32)
        if not self.live_chunks:
            return out
        n = self.live_chunks
        for term in tokenize([query])[0]:  # a repeated query term counts again, as in bm25s
            found = []
            for tc, live, offset in self.parts:
                rows, tf = tc.postings(term)
                if len(rows):
                    keep = live[rows]
                    rows, tf = rows[keep], tf[keep]
                    found.append((rows, tf, tc.lengths[rows], offset))
            df = sum(len(f[0]) for f in found)
            if df == 0:
                continue
            idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
            for rows, tf, dl, offset in found:
                norm = K1 * ((1 - B) + B * dl / self.avgdl)
                out[offset + rows] += (idf * tf / (tf + norm)).astype(np.float32)
        return out
