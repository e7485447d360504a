from __future__ import annotations

import itertools

import numpy as np
import pytest

from qa.engine import ABSTAIN_MESSAGE, Engine, filters_from
from qa.errors import InvalidRequest, NotFound
from qa.fusion import FusionConfig, familiarity, lexical_weight
from qa.search import Searcher


def test_answer_cites_the_best_passage_and_highlight_lies_inside(engine: Engine) -> None:
    result = engine.ask("how long should sourdough dough proof in the fridge", top_k=3)
    assert not result.abstained
    first = result.passages[0]
    assert first.citation.doc_id == "notes/baking.md"
    assert first.citation.heading == "Sourdough baking > Proofing"
    assert first.citation.start <= first.highlight.start < first.highlight.end
    assert first.highlight.end <= first.citation.end
    doc = engine.data.document(first.citation.doc_id)
    assert doc is not None
    sentence = doc.text[first.highlight.start : first.highlight.end]
    assert "proof overnight" in sentence
    assert result.answer is not None
    assert result.answer.text == f"{sentence} [1]"
    assert result.answer.citations == [1]


def test_every_passage_quotes_the_document_exactly(engine: Engine) -> None:
    result = engine.ask("NATO partners in the Indo-Pacific", top_k=10)
    assert [p.rank for p in result.passages] == list(range(1, len(result.passages) + 1))
    for p in result.passages:
        doc = engine.document(p.citation.doc_id)
        assert doc.text[p.citation.start : p.citation.end] == p.text
        assert doc.sha256 == p.citation.sha256
        lines = doc.text.split("\n")
        assert p.text.split("\n")[0] in lines[p.citation.line_start - 1]


def test_unrelated_question_abstains(engine: Engine) -> None:
    engine.settings.min_score = 0.5
    result = engine.ask("zebra quantum violin")
    assert result.abstained and result.answer is None
    assert result.message == ABSTAIN_MESSAGE


def test_filters_restrict_documents(engine: Engine) -> None:
    only_notes = engine.ask("NATO", top_k=10, filters=filters_from(None, "notes/"))
    assert {p.citation.doc_id for p in only_notes.passages} == {"notes/baking.md"}
    only_nato = engine.ask("bread", top_k=10, filters=filters_from(["nato-indo-pacific.txt"], None))
    assert {p.citation.doc_id for p in only_nato.passages} == {"nato-indo-pacific.txt"}
    nothing = engine.ask("bread", filters=filters_from(["missing.txt"], None))
    assert nothing.passages == [] and nothing.abstained


def test_overlapping_chunks_do_not_fill_the_top_k(engine: Engine) -> None:
    result = engine.ask("NATO Indo-Pacific partners security", top_k=10)
    spans = [(p.citation.doc_id, p.citation.start, p.citation.end) for p in result.passages]
    for i, (d1, s1, e1) in enumerate(spans):
        for d2, s2, e2 in spans[i + 1 :]:
            if d1 == d2:
                shared = min(e1, e2) - max(s1, s2)
                assert shared < 0.5 * min(e1 - s1, e2 - s2)


@pytest.mark.parametrize(
    ("question", "message"),
    [("", "non-empty"), ("   ", "non-empty"), ("x" * 2001, "2001 characters")],
)
def test_bad_questions_are_refused_with_the_reason(
    engine: Engine, question: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        engine.ask(question)


@pytest.mark.parametrize("top_k", [0, 51])
def test_top_k_out_of_range(engine: Engine, top_k: int) -> None:
    with pytest.raises(InvalidRequest, match="top_k"):
        engine.ask("NATO", top_k=top_k)


def test_unknown_document_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound, match="nope"):
        engine.document("nope")


def test_modes_rank_with_their_own_signal(engine: Engine) -> None:
    data = engine.data
    vector = engine.embedder.embed(["sourdough starter flour"])[0]
    for mode in ("dense", "bm25", "hybrid"):
        hits = Searcher(data, fusion=FusionConfig(mode=mode)).search(
            "sourdough starter flour", vector, 3
        )
        assert hits[0].chunk.doc_id == "notes/baking.md", mode
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_bm25_takes_over_on_a_corpus_foreign_to_the_model() -> None:
    cfg = FusionConfig()
    assert lexical_weight(cfg, familiarity(1.1, cfg)) == pytest.approx(cfg.lexical_weight)
    assert lexical_weight(cfg, familiarity(2.2, cfg)) == pytest.approx(0.8)
    middle = lexical_weight(cfg, familiarity((cfg.familiar_wppw + cfg.foreign_wppw) / 2, cfg))
    assert cfg.lexical_weight < middle < 0.8


def test_sentence_vectors_align_with_sentences(engine: Engine) -> None:
    data = engine.data
    sentences = data.sentences(data.chunk_ids)
    assert len(sentences.owner) == len(sentences.spans) == len(sentences.vectors) > 0
    norms = np.linalg.norm(sentences.vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)
