"""The fusion's pure functions (qa/fusion.py): normalisation, the convex combination and the
within-document order by the best sentence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qa.fusion import (
    FusionConfig,
    combine,
    fuse,
    normalise_dense,
    normalise_lexical,
    within_documents,
)


def test_the_normalisation_uses_the_theoretical_floors() -> None:
    cos = np.array([0.8, 0.5, -1.0], dtype=np.float32)
    assert normalise_dense(cos).tolist() == pytest.approx([1.0, 1.5 / 1.8, 0.0])
    # two close candidates stay close: min-max over the candidates would give 1 and 0
    assert normalise_dense(np.array([0.61, 0.60])).tolist() == pytest.approx([1.0, 1.6 / 1.61])
    assert normalise_lexical(np.array([4.0, 1.0, 0.0])).tolist() == [1.0, 0.25, 0.0]
    assert normalise_lexical(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_the_combination_is_convex_plus_the_exact_score() -> None:
    cfg = FusionConfig(lexical_weight=0.1, exact_weight=0.25)
    dense = np.array([0.8, 0.6])
    lexical = np.array([0.0, 5.0])
    exact = np.array([0.0, 1.0])
    got = combine(dense, lexical, exact, cfg)
    assert got.tolist() == pytest.approx([0.9 * 1.0, 0.9 * 1.6 / 1.8 + 0.1 + 0.25])
    # no term of the question in any candidate: the dense side alone decides
    assert combine(dense, np.zeros(2), np.zeros(2), cfg).tolist() == pytest.approx([1.0, 1.6 / 1.8])
    # a corpus the model does not know leans on BM25
    foreign = combine(dense, lexical, np.zeros(2), cfg, known=0.0)
    assert foreign[1] > foreign[0]


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30
    )
)
def test_within_documents_keeps_the_order_of_documents(
    rows: list[tuple[int, float, float]],
) -> None:
    documents = np.array([r[0] for r in rows])
    across = np.array([r[1] for r in rows])
    within = np.array([r[2] for r in rows])
    out = within_documents(across, within, documents)
    for d in set(documents.tolist()):
        mine = documents == d
        # the document keeps its scores, so its rank among documents is unchanged ...
        assert sorted(out[mine].tolist()) == sorted(across[mine].tolist())
        # ... and hands them out in the order of ``within``
        order = np.argsort(-within[mine], kind="stable")
        assert np.all(np.diff(out[mine][order]) <= 0)


def test_the_best_sentence_picks_the_passage_of_a_document() -> None:
    """Two chunks of document 0 and one of document 1: document 0 ranks first by its chunk
    cosine, and of its chunks the one whose best sentence answers comes first."""
    cfg = FusionConfig()
    chunk = np.array([0.70, 0.66, 0.50])
    sentence = np.array([0.60, 0.80, 0.50])
    documents = np.array([0, 0, 1])
    zeros = np.zeros(3)
    plain = fuse(chunk, zeros, zeros, cfg)
    got = fuse(chunk, zeros, zeros, cfg, sentence=sentence, documents=documents)
    assert np.argsort(-plain).tolist() == [0, 1, 2]
    assert np.argsort(-got).tolist() == [1, 0, 2]
    assert got.max() == plain.max()
    # BM25 mode is BM25 alone
    bm25 = fuse(chunk, np.array([1.0, 2.0, 0.0]), zeros, FusionConfig(mode="bm25"))
    assert bm25.tolist() == [0.5, 1.0, 0.0]
