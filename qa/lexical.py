"""BM25 over chunk texts with bm25s (English stopwords, Snowball stemming)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from qa.normalize import search_form

logging.getLogger("bm25s").setLevel(logging.WARNING)

_STEMMER = Stemmer.Stemmer("english")
# Identifiers with a number in them (libcurl3-gnutls, python3.11, 7.88.1, ERR-4012) are also
# kept whole: split and stemmed they match every package with a shared part (measured on
# eval/keywords: BM25 0.845 -> 0.857, hybrid 0.909 -> 0.933; no loss on the other sets).
_COMPOUND = re.compile(r"\b\w+(?:[-.+:/]\w+)+")


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """bm25s tokens (English stopwords, Snowball stems) plus whole numbered identifiers."""
    texts = [search_form(t) for t in texts]  # ligatures, full-width forms, NBSP, ZWSP
    tokens = bm25s.tokenize(
        list(texts),
        stopwords="en",
        stemmer=_STEMMER,
        return_ids=False,
        show_progress=False,
    )
    out = [list(t) for t in tokens]
    for terms, text in zip(out, texts, strict=True):
        terms.extend(
            m.group(0).lower()
            for m in _COMPOUND.finditer(text)
            if any(ch.isdigit() for ch in m.group(0))
        )
    return out


class BM25Index:
    """A bm25s index whose document order is the chunk order."""

    DIR_NAME = "bm25"

    def __init__(self, retriever: bm25s.BM25, size: int) -> None:
        self._retriever = retriever
        self.size = size

    @classmethod
    def build(cls, texts: Sequence[str]) -> BM25Index:
        retriever = bm25s.BM25()
        tokens = tokenize(texts) if texts else []
        # bm25s cannot index an empty corpus or empty documents' vocabulary; keep shapes
        if texts and any(tokens):
            retriever.index(tokens, show_progress=False)
        return cls(retriever, len(texts))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for ``query`` (zeros when no term is known)."""
        if self.size == 0 or not hasattr(self._retriever, "vocab_dict"):
            return np.zeros(self.size, dtype=np.float32)
        terms = tokenize([query])[0]
        ids = self._retriever.get_tokens_ids(terms)
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores_from_ids(ids), dtype=np.float32)

    def save(self, path: Path) -> None:
        target = path / self.DIR_NAME
        target.mkdir(parents=True, exist_ok=True)
        if hasattr(self._retriever, "vocab_dict"):
            self._retriever.save(str(target), show_progress=False)

    @classmethod
    def load(cls, path: Path, size: int) -> BM25Index:
        target = path / cls.DIR_NAME
        if size == 0 or not (target / "params.index.json").exists():
            return cls(bm25s.BM25(), size)
        retriever = bm25s.BM25.load(str(target), mmap=False, allow_pickle=False)
        return cls(retriever, size)


# --- exact identifiers -------------------------------------------------------------------------
# A maximal run of word characters joined by . - + : / @ (10.0.3.17, 2.14.3, libcurl3-gnutls,
# batch-3a914.csv, os.path.join). Matched whole only: 10.0.3.17 never matches 10.0.3.171.
_IDENTIFIER = re.compile(r"\w+(?:[-.+:/@]\w+)*")
_JOINED = re.compile(r"[^\W_][_./@][^\W_]")  # two letters or digits joined by _ . / @


def identifiers(text: str) -> set[str]:
    """The identifiers of ``text``, lower-cased: whole tokens that hold a digit (codes,
    numbers, IPs, versions, dates, error codes) or join words with ``_ . / @`` (file names,
    dotted and snake_case names). Plain words and hyphenated words are not identifiers."""
    out = set()
    for match in _IDENTIFIER.finditer(search_form(text).lower()):
        token = match.group(0)
        if any(ch.isdigit() for ch in token) or _JOINED.search(token):
            out.add(token)
    return out


def postings(texts: Sequence[str]) -> dict[str, list[int]]:
    """identifier -> the positions of the texts that hold it, ascending."""
    table: dict[str, list[int]] = {}
    for row, text in enumerate(texts):
        for token in identifiers(text):
            table.setdefault(token, []).append(row)
    return table


class IdentifierIndex:
    """Which chunks hold each identifier, for exact matching of rare identifiers.

    ``match`` gives each chunk the mean, over the question's identifiers found in the
    corpus, of ``rarity`` = log(N / df) / log(N) for the identifiers it holds: 1 for an
    identifier only that chunk holds, near 0 for one in most chunks (N chunks, df chunks
    holding it; the usual inverse document frequency, scaled to [0, 1]).
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self._postings = {t: np.asarray(r, dtype=np.int64) for t, r in postings(texts).items()}
        self.size = len(texts)

    @classmethod
    def from_postings(cls, table: dict[str, np.ndarray], size: int) -> IdentifierIndex:
        """An index from postings already made (``postings``, merged over segments), over
        ``size`` chunks."""
        index = cls([])
        index._postings, index.size = table, size
        return index

    def match(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, score in (0, 1]) of the chunks holding any of the query's identifiers."""
        found = [self._postings[t] for t in sorted(identifiers(query)) if t in self._postings]
        if not found or self.size < 2:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        log_n = np.log(self.size)
        rarity = [np.log(self.size / len(rows)) / log_n / len(found) for rows in found]
        all_rows = np.concatenate(found)
        weights = np.repeat(np.asarray(rarity, dtype=np.float64), [len(r) for r in found])
        rows_out, inverse = np.unique(all_rows, return_inverse=True)
        values = np.bincount(inverse, weights=weights).astype(np.float32)
        keep = values > 0
        return rows_out[keep], values[keep]
