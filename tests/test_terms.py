"""qa.index.terms: term counts as a Counter a chunk would give them (built in two passes
through a spill file); SegmentedBM25's sparse top-k, matches and scores_of equal to its
dense scores, bit for bit."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qa.lexical
from qa.index.terms import SegmentedBM25, TermCounts
from qa.lexical import tokenize

WORDS = ["red", "green", "Blue", "cyan", "stone", "river", "42", "v1.2", "ERR-4012.", "the"]
WORDS += ["x86_64-linux", "(python3.11)", "İstanbul", "ﬁnal", "a--b", "e.g.", "\x01", "::", "-"]


def reference_counts(texts: list[str]) -> tuple[dict[str, dict[int, int]], list[int]]:
    """term -> {chunk: frequency} and each chunk's number of terms, from ``tokenize``."""
    table: dict[str, dict[int, int]] = {}
    tokens = tokenize(texts) if texts else []
    for row, terms in enumerate(tokens):
        for term, count in Counter(terms).items():
            table.setdefault(term, {})[row] = count
    return table, [len(t) for t in tokens]


def as_table(counts: TermCounts) -> dict[str, dict[int, int]]:
    out = {}
    for term in counts.vocab:
        rows, tf = counts.postings(term)
        assert (np.diff(rows) > 0).all()  # rows ascending within a term
        out[term] = dict(zip(rows.tolist(), tf.astype(np.int64).tolist(), strict=True))
    return out


texts_strategy = st.lists(
    st.lists(st.sampled_from(WORDS), max_size=10).map(" ".join), min_size=0, max_size=25
)


@settings(max_examples=80, deadline=None)
@given(texts=texts_strategy, batch=st.sampled_from([1, 3, 8192]))
def test_term_counts_equal_a_counter_per_chunk(texts: list[str], batch: int) -> None:
    with mock.patch.object(qa.lexical, "_BATCH", batch):  # terms appear in later batches
        counts = TermCounts.build(texts)
    table, lengths = reference_counts(texts)
    assert as_table(counts) == table
    assert counts.lengths.tolist() == lengths
    assert counts.indptr[-1] == len(counts.rows) == len(counts.counts)
    assert counts.counts.dtype == np.uint16


def test_saved_counts_load_memory_mapped(tmp_path: Path) -> None:
    texts = ["the cat runs", "python3.11 and libcurl3-gnutls", "zz " * 70_000, "cats running"]
    built = TermCounts.build(texts)
    assert built.counts.dtype == np.float32  # a chunk holds "zz" 70,000 times: not uint16
    built.save(tmp_path)
    loaded = TermCounts.load(tmp_path)
    assert isinstance(loaded.rows, np.memmap)
    assert as_table(loaded) == as_table(built) == reference_counts(texts)[0]
    small = TermCounts.build(texts[:2] + texts[3:])
    assert small.counts.dtype == np.uint16
    bm25 = SegmentedBM25([(built, np.ones(4, bool), 0)], 4)
    again = SegmentedBM25([(loaded, np.ones(4, bool), 0)], 4)
    for q in ["cat running", "zz", "python3.11 zz cats"]:
        np.testing.assert_array_equal(bm25.scores(q), again.scores(q))


GEN_WORDS = st.sampled_from(["red", "green", "blue", "cyan", "stone", "river", "42", "v1.2"])


@pytest.mark.parametrize("sparse", [0, 10**9])  # sorted postings always, never
@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(
        st.lists(GEN_WORDS, min_size=1, max_size=8).map(" ".join)
        | st.sampled_from(["red", "red blue", "blue stone", "red red river"]),  # many ties
        min_size=1,
        max_size=40,
    ),
    cuts=st.lists(st.integers(0, 40), max_size=3),
    dead=st.lists(st.integers(0, 39), max_size=10),
    query=st.lists(GEN_WORDS, min_size=1, max_size=4).map(" ".join),
    k=st.integers(0, 6),
    allowed_seed=st.integers(0, 2**32 - 1) | st.none(),
)
def test_top_is_the_best_of_dense_scores(
    sparse: int,
    texts: list[str],
    cuts: list[int],
    dead: list[int],
    query: str,
    k: int,
    allowed_seed: int | None,
) -> None:
    n = len(texts)
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    live = np.ones(n, dtype=bool)
    live[[d for d in dead if d < n]] = False
    parts = [
        (TermCounts.build(texts[lo:hi]), live[lo:hi], lo) for lo, hi in itertools.pairwise(bounds)
    ]
    bm25 = SegmentedBM25(parts[::-1], n)  # parts in any order
    bm25._SPARSE = sparse
    scores = bm25.scores(query)
    allowed = None
    if allowed_seed is not None:
        allowed = np.random.default_rng(allowed_seed).random(n) < 0.5
    # full scoring, then the k best by (-score, row), as a dense top-k would
    order = np.lexsort((np.arange(n), -scores))
    order = order[scores[order] > 0]
    if allowed is not None:
        order = order[allowed[order]]
    rows, values = bm25.top(query, k, allowed)
    assert rows.tolist() == order[:k].tolist()
    assert values.tobytes() == scores[rows].tobytes()  # the same float32 scores, bit for bit
    found, found_values = bm25.matches(query)
    assert found.tolist() == np.flatnonzero(scores).tolist()
    assert found_values.tobytes() == scores[found].tobytes()
    some = np.random.default_rng(k).integers(0, n, 2 * n)
    assert bm25.scores_of(query, some).tobytes() == scores[some].tobytes()
    assert not scores[~live].any()


def test_top_ties_keep_the_lower_rows() -> None:
    texts = ["red blue"] * 10 + ["red"] * 5
    bm25 = SegmentedBM25([(TermCounts.build(texts), np.ones(15, bool), 0)], 15)
    rows, _ = bm25.top("red", 3)
    assert rows.tolist() == [10, 11, 12]  # "red" alone is shorter: a higher score
    rows, _ = bm25.top("blue", 4)
    assert rows.tolist() == [0, 1, 2, 3]
    assert bm25.top("unknown", 3)[0].size == 0
    assert bm25.top("red", 0)[0].size == 0


EVAL = Path(__file__).resolve().parent.parent / "eval"


@pytest.mark.parametrize("corpus", sorted(p.parent.name for p in EVAL.glob("*/corpus.jsonl")))
def test_term_counts_on_the_eval_corpora(corpus: str) -> None:
    """Real texts (Unicode, identifiers, markup remains): the batched counts are
    tokenize's, batch boundaries included."""
    lines = (EVAL / corpus / "corpus.jsonl").read_text("utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    with mock.patch.object(qa.lexical, "_BATCH", 500):
        counts = TermCounts.build(texts)
    table, lengths = reference_counts(texts)
    assert as_table(counts) == table
    assert counts.lengths.tolist() == lengths
