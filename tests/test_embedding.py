"""Embedding for a build (issue 10): sentence vectors pooled from their chunk's tokens, the
embedding variant in the index spec, the build progress bar. Fast: no model."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.cli import _embedding_progress
from qa.embedder import _form_offsets, pool_tokens
from qa.errors import IndexMismatch
from qa.evaluation import cache_key
from qa.index import load_current
from qa.index.files import read_manifest
from qa.index.spec import IndexSpec
from qa.normalize import search_form
from qa.settings import Settings
from tests.fakes import FakeEmbedder


class PoolingFake(FakeEmbedder):
    """A fake whose 'token pooling' of a span is the fake vector of the span's text, and
    whose window ends after ``window`` characters (spans beyond it come back as zeros)."""

    sentence_vectors = "pooled"
    variant = "fake+pooled"

    def __init__(self, window: int = 10_000) -> None:
        super().__init__()
        self.window = window
        self.span_calls: list[int] = []

    def embed_with_spans(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        self.span_calls.append(len(texts))
        vectors = FakeEmbedder.embed(self, texts)
        pieces = [t[s:e] for t, sp in zip(texts, spans, strict=True) for s, e in sp]
        pooled = FakeEmbedder.embed(self, pieces) if pieces else np.zeros((0, self.dimension))
        beyond = [s >= self.window for sp in spans for s, _ in sp]
        pooled[np.asarray(beyond, dtype=bool)] = 0.0
        if progress is not None:
            progress(len(texts))
        return vectors, pooled.astype(np.float32)


def test_pool_tokens_means_the_tokens_that_overlap_each_span() -> None:
    hidden = np.arange(20, dtype=np.float32).reshape(5, 4) + 1
    offsets = np.array([[0, 0], [0, 3], [4, 7], [8, 11], [0, 0]])  # [CLS] a b c [SEP]
    vector, spans = pool_tokens(hidden, offsets, [(0, 7), (9, 10), (20, 25)])

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    assert np.allclose(vector, unit(hidden.mean(axis=0)))  # as mean pooling: specials too
    assert np.allclose(spans[0], unit(hidden[1:3].mean(axis=0)))
    assert np.allclose(spans[1], unit(hidden[3]))  # a span inside one token
    assert not spans[2].any()  # beyond the window: a zero row


def test_span_offsets_follow_the_search_form() -> None:
    assert _form_offsets("plain ascii", [(0, 5)]) == [(0, 5)]
    text = "ﬁnal\u00adly café. Next one."
    (start, end), (s2, e2) = _form_offsets(text, [(0, 13), (14, 23)])
    form = search_form(text)
    assert form[start:end] == search_form(text[0:13]) == "finally café."
    assert form[s2:e2] == "Next one."


def pooled_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sentence_vectors": "pooled"})


def test_pooled_build_runs_each_chunk_once_and_keeps_sentence_vectors(
    settings: Settings,
) -> None:
    embedder = PoolingFake()
    s = pooled_settings(settings)
    report = build_index(
        Path(s.corpus_dir), Path(s.index_dir), embedder, spec_from_settings(s), reuse=False
    )
    assert sum(embedder.span_calls) == report.chunks == report.embedded
    assert_sentence_vectors_are_their_texts(s)


def assert_sentence_vectors_are_their_texts(s: Settings) -> None:
    """The fake pools a span as the fake vector of the span's text: so each sentence's
    vector must be that of its own text (its offsets into the chunk's embedding text,
    heading included, are right)."""
    snap = load_current(Path(s.index_dir), spec_from_settings(s))
    ids = snap.chunk_ids
    chunks = snap.chunks(ids)
    sentences = snap.sentences(ids)
    texts = [
        snap.document(chunks[o].doc_id).text[a:b]  # type: ignore[union-attr]
        for o, (a, b) in zip(sentences.owner, sentences.spans, strict=True)
    ]
    assert len(texts) > 10
    assert any(c.embed_text != c.text for c in chunks)  # a heading before the text
    # stored as 8-bit codes: each component within a step (1/127 of the largest)
    assert np.allclose(sentences.vectors, FakeEmbedder().embed(texts), atol=1e-2)


def test_sentences_beyond_the_window_are_embedded_on_their_own(settings: Settings) -> None:
    embedder = PoolingFake(window=40)
    s = pooled_settings(settings)
    report = build_index(
        Path(s.corpus_dir), Path(s.index_dir), embedder, spec_from_settings(s), reuse=False
    )
    assert report.embedded > report.chunks  # the late sentences, one by one
    assert_sentence_vectors_are_their_texts(s)


def test_an_index_of_another_embedding_is_refused(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    build_index(
        Path(settings.corpus_dir), Path(settings.index_dir), fake_embedder,
        spec_from_settings(settings),
    )  # fmt: skip
    assert (
        read_manifest(next(p for p in Path(settings.index_dir).glob("gen-*") if p.is_dir()))[
            "model"
        ]["embedding"]
        == "fp32+separate"  # the defaults
    )
    int8 = settings.model_copy(update={"embed_precision": "int8"})
    with pytest.raises(IndexMismatch, match=r"embedding 'fp32\+separate'.*'int8pc-l0\+separate'"):
        load_current(Path(settings.index_dir), spec_from_settings(int8))
    with pytest.raises(IndexMismatch, match="QA_SENTENCE_VECTORS"):
        load_current(Path(settings.index_dir), spec_from_settings(pooled_settings(settings)))


def test_an_index_of_per_tensor_int8_is_refused(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    """An index built before int8 became per-channel says ``int8+...`` in its manifest:
    its vectors are of another model file, so it is refused until rebuilt."""
    settings = settings.model_copy(update={"embed_precision": "int8", "sentence_vectors": "mixed"})
    build_index(
        Path(settings.corpus_dir), Path(settings.index_dir), fake_embedder,
        replace(spec_from_settings(settings), embedding="int8+mixed"),
    )  # fmt: skip
    with pytest.raises(IndexMismatch, match=r"embedding 'int8\+mixed'.*'int8pc-l0\+mixed'"):
        load_current(Path(settings.index_dir), spec_from_settings(settings))


def test_eval_cache_names_the_embedding_only_when_not_plain(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "1", "text": "x"}\n', "utf-8")
    plain = Settings(embed_precision="fp32", sentence_vectors="separate")
    variants = [
        plain,
        *(
            plain.model_copy(update={"embed_precision": p, "sentence_vectors": v})
            for p in ("fp32", "int8")
            for v in ("separate", "pooled", "mixed")
            if (p, v) != ("fp32", "separate")
        ),
    ]
    keys = {cache_key(corpus, spec_from_settings(s)) for s in variants}
    assert len(keys) == len(variants) == 6
    # the plain variant keeps the name it had before the embedding was a setting
    assert cache_key(corpus, spec_from_settings(plain)) == cache_key(
        corpus, replace(spec_from_settings(plain), embedding=IndexSpec.embedding)
    )


def test_build_progress_shows_count_rate_and_time_left(settings: Settings) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress, factory = _embedding_progress(console=console)
    embedder = FakeEmbedder()
    with progress:
        report = build_index(
            Path(settings.corpus_dir), Path(settings.index_dir), embedder,
            spec_from_settings(settings), progress=factory,
        )  # fmt: skip
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).splitlines()[-1]
    n = report.embedded
    assert f"{n}/{n}" in last
    assert re.search(r"[\d,]+ texts/s", last), last  # rate
    assert re.search(r"\d:\d\d:\d\d\s+\d:\d\d:\d\d", last), last  # elapsed, then time left


class MarkingFake(PoolingFake):
    """A pooling fake whose pooled sentence vectors differ from separately embedded ones:
    a pooled span gets the fake vector of ``"pooled " + its text``. Records the texts each
    path saw."""

    sentence_vectors = "mixed"

    def __init__(self) -> None:
        super().__init__()
        self.embedded: list[str] = []
        self.pooled_texts: list[str] = []

    def embed(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        self.embedded.extend(texts)
        return super().embed(texts, progress)

    def embed_with_spans(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        self.pooled_texts.extend(texts)
        vectors = FakeEmbedder.embed(self, texts)
        pieces = [f"pooled {t[s:e]}" for t, sp in zip(texts, spans, strict=True) for s, e in sp]
        pooled = FakeEmbedder.embed(self, pieces) if pieces else np.zeros((0, self.dimension))
        if progress is not None:
            progress(len(texts))
        return vectors, pooled.astype(np.float32)


def mixed_corpus(root: Path, long_sentences: int = 60) -> Path:
    corpus = root / "mixed-corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "short-a.txt").write_text(
        "Tea is grown on hills. The leaves are picked by hand.\n", "utf-8"
    )
    (corpus / "short-b.txt").write_text(
        "Trains run every hour. The last one leaves at midnight.\n", "utf-8"
    )
    (corpus / "long.txt").write_text(
        " ".join(
            f"Sentence number {i} talks about topic {i % 7} in some detail here."
            for i in range(long_sentences)
        )
        + "\n",
        "utf-8",
    )
    return corpus


def stored_sentences(s: Settings) -> list[tuple[str, str, np.ndarray]]:
    """(document id, sentence text, stored vector) of every sentence in the index."""
    snap = load_current(Path(s.index_dir), spec_from_settings(s))
    chunks = snap.chunks(snap.chunk_ids)
    sentences = snap.sentences(snap.chunk_ids)
    out = []
    for o, (a, b), v in zip(sentences.owner, sentences.spans, sentences.vectors, strict=True):
        doc = chunks[int(o)].doc_id
        out.append((doc, snap.document(doc).text[a:b], np.asarray(v)))  # type: ignore[union-attr]
    return out


def test_mixed_pools_only_documents_of_one_chunk(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(
        update={"corpus_dir": mixed_corpus(tmp_path), "sentence_vectors": "mixed"}
    )
    embedder = MarkingFake()
    report = build_index(
        Path(s.corpus_dir), Path(s.index_dir), embedder, spec_from_settings(s), reuse=False
    )
    snap = load_current(Path(s.index_dir), spec_from_settings(s))
    per_doc: dict[str, int] = {}
    for c in snap.chunks(snap.chunk_ids):
        per_doc[c.doc_id] = per_doc.get(c.doc_id, 0) + 1
    assert per_doc["long.txt"] > 1 and per_doc["short-a.txt"] == per_doc["short-b.txt"] == 1
    # one model call per chunk of a one-chunk document; the long one's chunks and sentences
    # each on their own
    assert len(embedder.pooled_texts) == 2
    assert all("Sentence number" not in t for t in embedder.pooled_texts)
    long_sentences = [t for d, t, _ in stored_sentences(s) if d == "long.txt"]
    assert set(long_sentences) <= set(embedder.embedded)
    assert report.embedded == 2 + len(set(embedder.embedded))
    fake = FakeEmbedder()
    for doc, text, vector in stored_sentences(s):
        expected = f"pooled {text}" if doc.startswith("short") else text
        assert np.allclose(vector, fake.embed([expected])[0], atol=1e-2), (doc, text)


def test_mixed_never_reuses_a_pooled_sentence_as_a_separate_one(
    settings: Settings, tmp_path: Path
) -> None:
    """A document of one chunk that grows to several: its sentences were pooled, so the
    rebuild embeds them on their own instead of reusing the pooled vectors; a long
    document's unchanged sentences are reused."""
    corpus = mixed_corpus(tmp_path)
    s = settings.model_copy(update={"corpus_dir": corpus, "sentence_vectors": "mixed"})
    spec = spec_from_settings(s)
    build_index(corpus, Path(s.index_dir), MarkingFake(), spec)
    grown = (
        (corpus / "short-a.txt").read_text("utf-8").strip()
        + " "
        + " ".join(f"Tea fact {i} is about leaves and hills of region {i}." for i in range(60))
    )
    (corpus / "short-a.txt").write_text(grown + "\n", "utf-8")
    with (corpus / "long.txt").open("a", encoding="utf-8") as fh:
        fh.write("One more closing sentence.\n")
    again = MarkingFake()
    report = build_index(corpus, Path(s.index_dir), again, spec)
    assert report.reused > 0  # the long document's unchanged texts
    assert "Tea is grown on hills." in again.embedded  # not the old pooled vector
    fake = FakeEmbedder()
    for doc, text, vector in stored_sentences(s):
        if doc != "short-b.txt":
            assert np.allclose(vector, fake.embed([text])[0], atol=1e-2), (doc, text)
