from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qa.chunker import Chunker, split_blocks, split_sentences
from qa.documents import Document, LineIndex
from tests.conftest import DEFAULT_CORPUS
from tests.fakes import FakeEmbedder

count = FakeEmbedder().count_tokens


def nato() -> Document:
    path = DEFAULT_CORPUS / "nato-indo-pacific.txt"
    text = path.read_text("utf-8")
    return Document("nato-indo-pacific.txt", "nato-indo-pacific.txt", "NATO", text)


def test_sentences_split_on_terminal_punctuation_not_abbreviations() -> None:
    text = "Dr. Smith met Mr. Jones in the U.S. capital. It rained! Did it? Yes."
    spans = split_sentences(text, 0, len(text))
    assert [text[s:e] for s, e in spans] == [
        "Dr. Smith met Mr. Jones in the U.S. capital.",
        "It rained!",
        "Did it?",
        "Yes.",
    ]


def test_headings_of_plain_text_are_detected() -> None:
    doc = nato()
    headings = [doc.text[b.start : b.end] for b in split_blocks(doc.text) if b.heading_level]
    assert headings[0] == "Why NATO is extending its influence to the Asia-Pacific?"
    assert "How these new collaborations will appear" in headings
    assert "Why is this occurring right now?" in headings


def test_heading_stays_with_the_text_under_it() -> None:
    doc = nato()
    chunks = Chunker(count, max_tokens=60, overlap_tokens=10).chunk(doc).chunks
    for chunk in chunks:
        assert chunk.text.strip() not in {
            "How these new collaborations will appear",
            "Why is this occurring right now?",
        }
    section = next(c for c in chunks if c.text.startswith("How these new collaborations"))
    assert "policy analysts" in section.text
    assert section.heading.endswith("How these new collaborations will appear")


def test_chunks_respect_the_token_limit_and_do_not_cut_sentences() -> None:
    doc = nato()
    chunked = Chunker(count, max_tokens=50, overlap_tokens=10).chunk(doc)
    sentence_ends = {e for sents in chunked.sentences for _, e in sents}
    for chunk in chunked.chunks:
        assert count([chunk.text])[0] <= 50
        assert chunk.end in sentence_ends or chunk.text == chunk.text.rstrip()
        assert doc.text[chunk.start : chunk.end] == chunk.text


def test_consecutive_chunks_overlap_inside_a_paragraph() -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(30))
    doc = Document("d", "d", "d", text)
    chunks = Chunker(count, max_tokens=40, overlap_tokens=12).chunk(doc).chunks
    assert len(chunks) > 2
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end, "expected overlap"


def test_an_over_long_sentence_is_cut_at_words() -> None:
    text = "word " * 300
    doc = Document("d", "d", "d", text.strip() + ".")
    chunks = Chunker(count, max_tokens=50, overlap_tokens=0).chunk(doc).chunks
    assert len(chunks) >= 6
    assert all(count([c.text])[0] <= 50 for c in chunks)
    assert all(doc.text[c.start : c.end] == c.text for c in chunks)


def test_line_numbers_are_one_based_and_exact() -> None:
    doc = nato()
    lines = doc.text.split("\n")
    for chunk in Chunker(count, max_tokens=40, overlap_tokens=8).chunk(doc).chunks:
        first = lines[chunk.line_start - 1]
        last = lines[chunk.line_end - 1]
        assert chunk.text.startswith(first[: len(chunk.text)].lstrip()[:10]) or (
            chunk.text[:10] in first
        )
        assert chunk.text.rstrip()[-10:] in last


def test_line_index() -> None:
    li = LineIndex("ab\ncd\n\nef")
    assert li.line_of(0) == 1
    assert li.line_of(3) == 2
    assert li.line_of(7) == 4
    assert li.span_lines(0, 5) == (1, 2)


_alphabet = st.sampled_from([*list("abcde XYZ.!?\n\n#-,'\""), "é", "ß", "中", "\t", "\r"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(alphabet=_alphabet, min_size=1, max_size=600),
    max_tokens=st.integers(3, 60),
    overlap=st.integers(0, 20),
)
def test_offsets_always_point_into_the_text(text: str, max_tokens: int, overlap: int) -> None:
    overlap = min(overlap, max_tokens - 1)
    doc = Document("d", "d", "d", text)
    chunked = Chunker(count, max_tokens, overlap).chunk(doc)
    lines = LineIndex(text)
    covered = set()
    for chunk, sents in zip(chunked.chunks, chunked.sentences, strict=True):
        assert doc.text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
        assert (chunk.line_start, chunk.line_end) == lines.span_lines(chunk.start, chunk.end)
        for s, e in sents:
            assert chunk.start <= s < e <= chunk.end
        covered.update(range(chunk.start, chunk.end))
    # every visible character is in some chunk: nothing is lost
    for i, ch in enumerate(text):
        if not ch.isspace():
            assert i in covered, (i, ch)


def test_default_corpus_file_is_shipped_byte_for_byte() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "nato-indo-pacific.txt"
    ours = DEFAULT_CORPUS / "nato-indo-pacific.txt"
    if shared.exists():
        assert ours.read_bytes() == shared.read_bytes()
    assert ours.stat().st_size > 3000
