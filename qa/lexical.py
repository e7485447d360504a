"""BM25 tokens and term counts of chunk texts (English stopwords, Snowball stemming, as bm25s).

:func:`tokenize` gives one text's terms (queries, tests); :func:`term_counts` counts the
terms of many texts in batches of token ids, without a Python object per token, for the
index's ``TermCounts`` (qa.index.terms). ``BM25Index`` is bm25s's eager index (a CSC matrix
of precomputed BM25 scores, ``.npy`` + JSON, read back memory-mapped) built from the same
counts instead of through ``bm25s.BM25.index``, which wants every document as a Python list
of token strings (3.8 GB and 147 s at 1M chunks); tokens and scores are bm25s's
(tests/test_lexical.py). Figures: ``python -m bench.scale``, docs/performance.md.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import tempfile
from collections.abc import Sequence
from itertools import chain, repeat
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import Stemmer

from qa.normalize import search_form

# bm25s runs a JAX top-k at import time when JAX is installed. qa never uses JAX (BM25's
# top-k here is numpy's), and where JAX is installed but cannot start its CUDA backend that
# call raises and the import of qa fails (seen on a GPU machine whose server workers could
# not open the device). So JAX is hidden from this one import (bm25s then selects with
# numpy); a JAX the process had already imported is left as it is.
_HIDE_JAX = "jax" not in sys.modules
if _HIDE_JAX:
    sys.modules["jax"] = None  # type: ignore[assignment]
try:
    import bm25s
    from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer
    from bm25s.stopwords import STOPWORDS_EN
finally:
    if _HIDE_JAX:
        del sys.modules["jax"]

logging.getLogger("bm25s").setLevel(logging.WARNING)

_STEMMER = Stemmer.Stemmer("english")
_STOPWORDS = frozenset(STOPWORDS_EN)
_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s's token pattern
# Identifiers with a number in them (libcurl3-gnutls, python3.11, 7.88.1, ERR-4012) are also
# kept whole: split and stemmed they match every package with a shared part (measured on
# eval/keywords: BM25 0.845 -> 0.857, hybrid 0.909 -> 0.933; no loss on the other sets).
# They always hold one of - . + : / and words never do, so the two kinds cannot collide.
_COMPOUND = re.compile(r"\b\w+(?:[-.+:/]\w+)+")
# A group: word-character runs joined by single separators. Every run of a text lies in
# one group, and the groups with a separator are exactly the _COMPOUND matches; so one
# pass over an ASCII text finds both the words (the runs of 2+ characters) and the
# identifiers, and each distinct group is split, stemmed and looked up once.
_GROUP = re.compile(r"\w++(?:[-.+:/]\w++)*")
_SEPARATOR = re.compile(r"[-.+:/]")
_COMPOUND_KEY = "\x00"  # marks a whole identifier found by the non-ASCII path
_BATCH = 8192  # texts tokenized at a time while building


def _keys(text: str) -> list[str]:
    """The groups of ``text`` (lower-cased), each to be expanded by :func:`_key_terms`."""
    text = search_form(text)  # ligatures, full-width forms, NBSP, ZWSP
    lowered = text.lower()
    if text.isascii():  # lower() keeps every character's class and the length
        return _GROUP.findall(lowered)
    # elsewhere lower-casing may change what is a word character (İ -> i + U+0307):
    # words from the lower-cased text, identifiers from the text, as bm25s and before
    keys = _WORD.findall(lowered)
    keys.extend(
        _COMPOUND_KEY + c.lower() for c in _COMPOUND.findall(text) if any(ch.isdigit() for ch in c)
    )
    return keys


def _key_terms(key: str) -> tuple[str, ...]:
    """Index terms of one :func:`_keys` item: its words of 2+ characters that are not
    stopwords, stemmed, and the whole group when it is a numbered identifier."""
    if key.startswith(_COMPOUND_KEY):
        return (key[1:],)
    parts = _SEPARATOR.split(key)
    terms = [str(_STEMMER.stemWord(p)) for p in parts if len(p) >= 2 and p not in _STOPWORDS]
    if len(parts) > 1 and any(ch.isdigit() for ch in key):
        terms.append(key)
    return tuple(terms)


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """bm25s tokens (English stopwords, Snowball stems) plus whole numbered identifiers."""
    return [[t for key in _keys(text) for t in _key_terms(key)] for text in texts]


_cached_key_terms = functools.lru_cache(maxsize=1 << 16)(_key_terms)
_CACHED_KEY_CHARS = 64  # longer groups (URLs, minified code) are expanded, not kept


def _group_terms(key: str) -> tuple[str, ...]:
    """:func:`_key_terms` through the bounded cache for groups of up to 64 characters, so
    that the cache holds at most 65,536 short keys whatever the corpus."""
    return _cached_key_terms(key) if len(key) <= _CACHED_KEY_CHARS else _key_terms(key)


def term_sets(texts: Sequence[str]) -> list[set[str]]:
    """The set of :func:`tokenize`'s terms of each text, each distinct group expanded once
    a process (a bounded cache of :func:`_key_terms`): search highlights 40-odd sentences a
    question, whose words repeat from one question to the next."""
    return [set(chain.from_iterable(map(_group_terms, _keys(text)))) for text in texts]


class _Terms:
    """Term columns while building: each distinct token is split and stemmed once."""

    _SENTINEL = "\x01"  # joins a batch's ASCII texts (a text holding it takes the other path)
    _NEXT, _MISSING = -3, -4
    # Lower-cased ASCII as whitespace-separated tokens: a character that no group holds
    # (anything but [a-z0-9_] and the separators - . + : /) becomes a space. A group never
    # crosses such a character, so the groups of a token are those of the text there.
    _SPACES = str.maketrans(
        {c: " " for c in map(chr, range(128)) if not (c.isalnum() or c in "_-.+:/\x01")}
    )

    def __init__(self) -> None:
        self.columns: dict[str, int] = {}  # term -> column
        # token -> its one term's column, -1 for none, -5 - i for several (self._several[i])
        self._code: dict[str, int] = {self._SENTINEL: self._NEXT}
        self._several: list[tuple[int, ...]] = []

    def _add(self, token: str) -> None:
        """Code of a token: the terms of its groups (:func:`_key_terms`), in order."""
        terms = tuple(
            self.columns.setdefault(t, len(self.columns))
            for key in _GROUP.findall(token)
            for t in _key_terms(key)
        )
        if len(terms) <= 1:
            code = terms[0] if terms else -1
        else:
            code = -5 - len(self._several)
            self._several.append(terms)
        self._code[token] = code

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text int32, column int32) of every term of ``texts``, one pair a term.

        ASCII texts (most) are joined by a sentinel token, lower-cased, stripped of every
        character that no group holds and split on whitespace, all in C; each distinct
        token is cut into groups (:data:`_GROUP`) once. The others one at a time, as
        :func:`_keys` does."""
        plain: list[str] = []
        plain_rows: list[int] = []
        owners: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for row, text in enumerate(texts):
            form = text if text.isascii() else search_form(text)
            if form.isascii() and self._SENTINEL not in form:
                plain.append(form)
                plain_rows.append(row)
                continue
            columns = [c for key in _keys(form) for c in self._columns_of(key)]
            owners.append(np.full(len(columns), row, dtype=np.int32))
            cols.append(np.asarray(columns, dtype=np.int32))
        joined = f" {self._SENTINEL} ".join(plain).lower().translate(self._SPACES)
        keys = joined.split()
        del joined
        codes = np.fromiter(map(self._code.get, keys, repeat(self._MISSING)), np.int32, len(keys))
        missing = np.flatnonzero(codes == self._MISSING).tolist()
        if missing:
            for key in set(map(keys.__getitem__, missing)):
                self._add(key)
            found = map(self._code.__getitem__, map(keys.__getitem__, missing))
            codes[missing] = np.fromiter(found, np.int32, len(missing))
        del keys
        owner = np.asarray(plain_rows, dtype=np.int32)[np.cumsum(codes == self._NEXT)]
        one = codes >= 0
        owners.append(owner[one])
        cols.append(codes[one])
        several = np.flatnonzero(codes <= -5)
        if len(several):  # identifiers, hyphenated words, tokens of several groups
            which, inverse = np.unique(-5 - codes[several], return_inverse=True)
            lists = [self._several[i] for i in which.tolist()]
            sizes = np.fromiter(map(len, lists), np.int64, len(lists))
            flat = np.fromiter(chain.from_iterable(lists), np.int32, int(sizes.sum()))
            size = sizes[inverse]
            first = (np.cumsum(sizes) - sizes)[inverse]
            owners.append(np.repeat(owner[several], size))
            at = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
            cols.append(flat[np.repeat(first, size) + at])
        return np.concatenate(owners), np.concatenate(cols)

    def _columns_of(self, key: str) -> tuple[int, ...]:
        if key.startswith(_COMPOUND_KEY) or key not in self._code or key == self._SENTINEL:
            return tuple(self.columns.setdefault(t, len(self.columns)) for t in _key_terms(key))
        code = self._code[key]
        if code >= 0:
            return (code,)
        return () if code == -1 else self._several[-5 - code]


def _term_rows(
    texts: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Term frequencies of ``texts`` as a (chunks x terms) CSR matrix: (counts float32,
    columns int32, indptr), each chunk's number of terms (int64) and the term -> column map.
    Tokens are counted a batch at a time, so the only full-size arrays are the matrix's."""
    terms = _Terms()
    blocks: list[sp.csr_matrix] = []
    lengths: list[np.ndarray] = []
    for start in range(0, len(texts), _BATCH):
        batch = texts[start : start + _BATCH]
        owner, columns = terms.batch(batch)
        counts = sp.csr_matrix(
            (np.ones(len(columns), dtype=np.float32), (owner, columns)),
            shape=(len(batch), len(terms.columns)),
        )
        counts.sum_duplicates()  # term frequencies, one entry per (chunk, term)
        blocks.append(counts)
        lengths.append(np.bincount(owner, minlength=len(batch)))
    n = len(texts)
    nnz = sum(block.nnz for block in blocks)
    data = np.empty(nnz, dtype=np.float32)
    index_type = np.int32 if nnz < 2**31 else np.int64  # scipy widens mixed index types
    indices = np.empty(nnz, dtype=index_type)
    indptr = np.zeros(n + 1, dtype=index_type)
    at = row = 0
    while blocks:  # concatenate, freeing each block once copied
        block = blocks.pop(0)
        data[at : at + block.nnz] = block.data
        indices[at : at + block.nnz] = block.indices
        indptr[row + 1 : row + 1 + block.shape[0]] = block.indptr[1:] + at
        at, row = at + block.nnz, row + block.shape[0]
    doc_len = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return data, indices, indptr, doc_len, terms.columns


def term_counts(
    texts: Sequence[str],
) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Term frequencies of ``texts`` (tokens as :func:`tokenize`), by term: (term -> id,
    indptr int64 (terms + 1,), rows int32 and counts (one per (term, chunk) pair, rows
    ascending within a term; uint16, float32 where a chunk holds a term 65,536 times or
    more), lengths float32 (chunks,): terms a chunk).

    For term id t, ``rows[indptr[t]:indptr[t+1]]`` are the chunks holding it. Two passes,
    so that the pairs are held once, by term: each batch of texts is counted into a small
    (chunks x terms) CSC matrix whose pairs go to a temporary file (6 bytes a pair), then,
    with every term's chunk count known, each batch's pairs are copied from the file to
    their places in the output. Peak memory is the output (6 bytes a pair) plus one batch:
    1M chunks in docs/performance.md."""
    assert _BATCH < 2**16  # a batch's rows are spilled as uint16
    terms = _Terms()
    n = len(texts)
    lengths = np.zeros(n, dtype=np.float32)
    df = np.zeros(1024, dtype=np.int64)  # chunks holding each term, grown as terms appear
    pieces: list[tuple[int, int, int]] = []  # (first row, distinct terms, pairs) a batch
    most = 0
    with tempfile.TemporaryFile(prefix="qa-terms-") as spill:
        for start in range(0, n, _BATCH):
            batch = texts[start : start + _BATCH]
            owner, columns = terms.batch(batch)
            width = len(terms.columns)
            lengths[start : start + len(batch)] = np.bincount(owner, minlength=len(batch))
            # duplicates summed and rows sorted within each column: the term frequencies
            piece = sp.csc_matrix(
                (np.ones(len(columns), dtype=np.int32), (owner, columns)),
                shape=(len(batch), width),
            )
            del owner, columns
            sizes = np.diff(piece.indptr)
            if width > len(df):
                df = np.concatenate([df, np.zeros(max(width, 2 * len(df)) - len(df), np.int64)])
            df[:width] += sizes
            present = np.flatnonzero(sizes).astype(np.int32)
            present.tofile(spill)
            sizes[present].astype(np.int32).tofile(spill)
            piece.indices.astype(np.uint16).tofile(spill)
            piece.data.astype(np.int32, copy=False).tofile(spill)
            most = max(most, int(piece.data.max(initial=0)))
            pieces.append((start, len(present), piece.nnz))
            del piece, sizes, present
        width = len(terms.columns)
        indptr = np.zeros(width + 1, dtype=np.int64)
        np.cumsum(df[:width], out=indptr[1:])
        del df
        nnz = int(indptr[-1])
        rows = np.empty(nnz, dtype=np.int32)
        counts = np.empty(nnz, dtype=np.uint16 if most < 2**16 else np.float32)
        cursor = indptr[:-1].copy()  # where each term's next pair goes
        spill.seek(0)
        for first_row, present_count, pairs in pieces:
            present = np.fromfile(spill, np.int32, present_count)
            sizes = np.fromfile(spill, np.int32, present_count).astype(np.int64)
            local = np.fromfile(spill, np.uint16, pairs)
            data = np.fromfile(spill, np.int32, pairs)
            at = np.repeat(cursor[present] - (np.cumsum(sizes) - sizes), sizes)
            at += np.arange(pairs)
            rows[at] = local.astype(np.int32) + first_row
            counts[at] = data
            cursor[present] += sizes
            del present, sizes, local, data, at
    return terms.columns, indptr, rows, counts, lengths


def _score_matrix(
    texts: Sequence[str], k1: float, b: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """bm25s's eager index of ``texts``: (data float32, indices int32, indptr) of the
    (chunks x terms) CSC matrix of BM25 scores (Lucene variant, bm25s's formulas), and the
    term -> column map."""
    data, indices, indptr, doc_len, vocab = _term_rows(texts)
    n, width, nnz = len(texts), len(vocab), len(data)
    idf_of = _select_idf_scorer("lucene")
    df = np.bincount(indices, minlength=width)
    idf = np.fromiter((idf_of(int(d), N=n) for d in df), np.float32, width)
    tfc = _select_tfc_scorer("lucene")
    avg_len = float(doc_len.mean()) if n else 0.0
    step = 1 << 22
    row_of = np.repeat(np.arange(n, dtype=np.int32), np.diff(indptr))
    for lo in range(0, nnz, step):  # scores in slices: no nnz-sized temporaries
        part = slice(lo, lo + step)
        l_d = doc_len[row_of[part]]
        data[part] = idf[indices[part]] * tfc(data[part], l_d=l_d, l_avg=avg_len, k1=k1, b=b)
    del row_of
    csc = sp.csr_matrix((data, indices, indptr), shape=(n, width)).tocsc()
    return csc.data.astype(np.float32, copy=False), csc.indices, csc.indptr, vocab


class BM25Index:
    """A bm25s index whose document order is the chunk order."""

    DIR_NAME = "bm25"

    def __init__(self, retriever: bm25s.BM25, size: int) -> None:
        self._retriever = retriever
        self.size = size

    @classmethod
    def build(cls, texts: Sequence[str]) -> BM25Index:
        """Index ``texts`` (one a chunk, in chunk order). Tokens as :func:`tokenize`, scores
        as ``bm25s.BM25().index`` (k1 1.5, b 0.75, Lucene)."""
        retriever = bm25s.BM25()
        if texts:
            data, indices, indptr, vocab = _score_matrix(texts, retriever.k1, retriever.b)
            # bm25s cannot index an empty corpus or empty documents' vocabulary; keep shapes
            if len(data):
                vocab[""] = len(vocab)  # what bm25s.BM25.index adds (create_empty_token)
                retriever.scores = {
                    "data": data,
                    "indices": indices,
                    "indptr": indptr,
                    "num_docs": len(texts),
                }
                retriever.vocab_dict = vocab
                retriever.nonoccurrence_array = None
                retriever.unique_token_ids_set = set(vocab.values())
        return cls(retriever, len(texts))

    def _term_ids(self, query: str) -> np.ndarray:
        if self.size == 0 or not hasattr(self._retriever, "vocab_dict"):
            return np.zeros(0, dtype=np.int64)
        terms = tokenize([query])[0]
        return np.asarray(self._retriever.get_tokens_ids(terms), dtype=np.int64)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for ``query``, float32 (size,) (zeros when no term is
        known). The sum of the query terms' columns, as ``bm25s.BM25.get_scores``."""
        ids = self._term_ids(query)
        if len(ids) == 0:
            return np.zeros(self.size, dtype=np.float32)
        matrix = self._retriever.scores
        indptr, indices, data = matrix["indptr"], matrix["indices"], matrix["data"]
        rows = np.concatenate([indices[indptr[t] : indptr[t + 1]] for t in ids])
        values = np.concatenate([data[indptr[t] : indptr[t + 1]] for t in ids])
        return np.bincount(rows, weights=values, minlength=self.size).astype(np.float32)

    def top(
        self, query: str, k: int, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, scores float32) of the ``k`` best-scoring chunks holding a query
        term, best first (ties: lower row first); with ``rows``, only among those rows."""
        scores = self.scores(query)
        if rows is not None:
            allowed = np.zeros(self.size, dtype=bool)
            allowed[np.asarray(rows, dtype=np.int64)] = True
            scores[~allowed] = 0.0
        found = np.flatnonzero(scores > 0)
        if k <= 0 or len(found) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if len(found) > k:  # the k best; of those tied with the k-th, the lowest rows
            values = scores[found]
            kth = np.partition(values, len(values) - k)[len(values) - k]
            above, tied = found[values > kth], found[values == kth]
            found = np.concatenate([above, tied[: k - len(above)]])
        order = np.lexsort((found, -scores[found]))
        best = found[order].astype(np.int64)
        return best, scores[best]

    def save(self, path: Path) -> None:
        """Write bm25s's files (``.npy`` arrays and JSON, no pickle) under ``path/bm25``."""
        target = path / self.DIR_NAME
        target.mkdir(parents=True, exist_ok=True)
        if hasattr(self._retriever, "vocab_dict"):
            self._retriever.save(str(target), show_progress=False)

    @classmethod
    def load(cls, path: Path, size: int, *, mmap: bool = True) -> BM25Index:
        """Read the index under ``path/bm25``; with ``mmap`` the score arrays stay in the
        files (``np.load(mmap_mode="r")``), shared by every process serving them."""
        target = path / cls.DIR_NAME
        if size == 0 or not (target / "params.index.json").exists():
            return cls(bm25s.BM25(), size)
        retriever = bm25s.BM25.load(str(target), mmap=mmap, allow_pickle=False)
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
