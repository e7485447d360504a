"""qa.lexical.BM25Index: the batched build gives bm25s's own scores; memory-mapped load; top-k."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from hypothesis import given, settings
from hypothesis import strategies as st

from qa.lexical import BM25Index, term_sets, tokenize
from qa.normalize import search_form

WORDS = ["the", "running", "runs", "cat", "cats", "libcurl3-gnutls", "python3.11", "7.88.1"]
WORDS += ["ERR-4012", "of", "ﬁnal", "final", "a", "zebra", "data_set", "x", "Ünïcode", "and"]
WORDS += ["İstanbul", "x86_64-linux", "e.g.", "out-of-date", "v2", "ＡＢＣ１２-3"]


def reference_tokenize(text: str) -> list[str]:
    """The tokenizer on main at d764e7d: bm25s.tokenize, then numbered identifiers whole."""
    text = search_form(text)
    tokens = bm25s.tokenize(
        [text], stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
        show_progress=False,
    )[0]  # fmt: skip
    compounds = re.findall(r"\b\w+(?:[-.+:/]\w+)+", text)
    return list(tokens) + [c.lower() for c in compounds if any(ch.isdigit() for ch in c)]


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(
        st.sampled_from([*"aAbeİıßﬁ1２3-.+:/_ \n", "the", "of", "x86", "İstanbul"]), max_size=30
    ).map("".join)
)
def test_tokens_as_bm25s_plus_identifiers(text: str) -> None:
    assert sorted(tokenize([text])[0]) == sorted(reference_tokenize(text))


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(
        st.lists(
            st.sampled_from([*"aAbeİıßﬁ1２3-.+:/_ \n", "the", "of", "x86", "İstanbul", "running"]),
            max_size=30,
        ).map("".join),
        max_size=5,
    )
)
def test_term_sets_are_the_sets_of_tokenize(texts: list[str]) -> None:
    # the highlight's fast path (groups expanded through a cache) gives the same terms,
    # the first time and from the cache
    expected = [set(terms) for terms in tokenize(texts)]
    assert term_sets(texts) == expected
    assert term_sets(texts) == expected


def test_long_groups_are_expanded_but_not_cached() -> None:
    """The highlight's cache keeps short groups only: a corpus of long tokens (URLs,
    minified code) cannot fill it with kilobytes a key."""
    from qa import lexical

    long = "-".join(f"part{i}" for i in range(40))  # one group of 270 characters
    before = lexical._cached_key_terms.cache_info().currsize
    assert term_sets([long]) == [set(tokenize([long])[0])]
    assert "part7" in term_sets([long])[0]
    assert lexical._cached_key_terms.cache_info().currsize == before
    term_sets(["a short v2-beta token"])
    assert lexical._cached_key_terms.cache_info().currsize > before


def reference_scores(texts: list[str], query: str) -> np.ndarray:
    """bm25s's own path: ``BM25().index`` on token strings, ``get_scores``."""
    retriever = bm25s.BM25()
    retriever.index(tokenize(texts), show_progress=False)
    ids = retriever.get_tokens_ids(tokenize([query])[0])
    if not ids:
        return np.zeros(len(texts), dtype=np.float32)
    return np.asarray(retriever.get_scores_from_ids(ids), dtype=np.float32)


texts_strategy = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join),
    min_size=1,
    max_size=40,
).filter(lambda texts: any(tokenize(texts)))


@settings(max_examples=60, deadline=None)
@given(texts=texts_strategy, query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4))
def test_batched_build_scores_as_bm25s(texts: list[str], query: list[str]) -> None:
    q = " ".join(query)
    ours = BM25Index.build(texts).scores(q)
    np.testing.assert_allclose(ours, reference_scores(texts, q), rtol=1e-5, atol=1e-6)


def test_build_spans_several_batches(monkeypatch) -> None:
    import qa.lexical

    monkeypatch.setattr(qa.lexical, "_BATCH", 7)  # new terms appear in later batches
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 10)) for _ in range(50)]
    texts[40] += " onlyhere v9.9.9"
    for q in ["running cat", "onlyhere", "v9.9.9 zebra", "final data_set"]:
        np.testing.assert_allclose(
            BM25Index.build(texts).scores(q), reference_scores(texts, q), rtol=1e-5, atol=1e-6
        )


def test_saved_index_loads_memory_mapped(tmp_path: Path) -> None:
    texts = ["the cat runs", "python3.11 and libcurl3-gnutls", "zebra data", "cats running far"]
    built = BM25Index.build(texts)
    built.save(tmp_path)
    loaded = BM25Index.load(tmp_path, len(texts))
    assert isinstance(loaded._retriever.scores["data"], np.memmap)
    assert isinstance(loaded._retriever.scores["indices"], np.memmap)
    for q in ["running cat", "python3.11", "nothing known"]:
        np.testing.assert_array_equal(loaded.scores(q), built.scores(q))
    in_memory = BM25Index.load(tmp_path, len(texts), mmap=False)
    assert not isinstance(in_memory._retriever.scores["data"], np.memmap)


def test_top_is_the_best_of_scores_with_filter() -> None:
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 8)) for _ in range(300)]
    index = BM25Index.build(texts)
    for q in ["running cat", "zebra final", "7.88.1"]:
        scores = index.scores(q)
        rows, top_scores = index.top(q, 10)
        expected = np.lexsort((np.arange(len(scores)), -scores))[:10]
        expected = expected[scores[expected] > 0]
        assert list(rows) == list(expected)
        np.testing.assert_array_equal(top_scores, scores[rows])
        allowed = np.arange(0, 300, 3)
        rows, _ = index.top(q, 10, rows=allowed)
        assert set(rows) <= set(allowed)
        best_allowed = allowed[np.lexsort((allowed, -scores[allowed]))][:10]
        assert list(rows) == [r for r in best_allowed if scores[r] > 0]


def test_no_term_known_and_empty_corpus(tmp_path: Path) -> None:
    index = BM25Index.build(["the cat"])
    assert index.top("unknownword", 5)[0].size == 0
    assert not index.scores("unknownword").any()
    empty = BM25Index.build([])
    assert empty.scores("cat").shape == (0,)
    only_stopwords = BM25Index.build(["the of and", "a"])
    assert only_stopwords.scores("the").tolist() == [0.0, 0.0]
    only_stopwords.save(tmp_path)
    assert BM25Index.load(tmp_path, 2).scores("cat").tolist() == [0.0, 0.0]


_BROKEN_JAX = """
def top_k(*args, **kwargs):
    raise RuntimeError("Unable to initialize backend 'cuda': no supported devices found")
"""


def _import_with_broken_jax(tmp_path: Path, first: str) -> subprocess.CompletedProcess[str]:
    """Import qa.lexical in a fresh interpreter that has a JAX whose top-k raises, as one
    whose CUDA plugin cannot start does (bm25s calls it at import time)."""
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("from jax import lax\n")
    (tmp_path / "jax" / "lax.py").write_text(_BROKEN_JAX)
    code = (
        f"{first}\nimport sys, qa.lexical\n"
        "print('jax' in sys.modules, qa.lexical.tokenize(['Running dogs'])[0])"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root}"}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_broken_jax_does_not_stop_qa_from_importing(tmp_path: Path) -> None:
    """bm25s runs a JAX top-k when it is imported; qa never uses JAX, so a JAX that cannot
    start (a GPU machine's CUDA plugin without the device) must not break qa's import."""
    done = _import_with_broken_jax(tmp_path, "")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "['run',", "'dog']"], done.stdout


def test_a_jax_already_imported_is_left_alone(tmp_path: Path) -> None:
    done = _import_with_broken_jax(tmp_path, "import jax")
    assert done.returncode != 0 and "Unable to initialize backend" in done.stderr
