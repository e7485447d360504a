"""Regressions found in review: each test names what a user would have hit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qa.assemble import spec_from_settings
from qa.builder import build_index, index_freshness
from qa.chunker import Chunker
from qa.engine import Engine
from qa.errors import InvalidRequest, QAError
from qa.http import create_app
from qa.index import current_generation_dir, rollback
from qa.loaders import load_corpus
from qa.settings import Settings
from tests.fakes import FakeEmbedder
from tests.test_loaders import make_pdf


def build(settings: Settings, embedder: FakeEmbedder):
    return build_index(
        Path(settings.corpus_dir), Path(settings.index_dir), embedder, spec_from_settings(settings)
    )


def test_generation_numbers_are_never_reused_after_a_rollback(settings: Settings) -> None:
    embedder = FakeEmbedder()
    build(settings, embedder)
    (Path(settings.corpus_dir) / "v2.md").write_text("# V2\n\nSecond version.\n", "utf-8")
    build(settings, embedder)
    engine = Engine(settings, embedder=embedder)
    engine.load()
    assert engine.data.generation == 2
    rollback(Path(settings.index_dir))
    (Path(settings.corpus_dir) / "v3.md").write_text("# V3\n\nThird version.\n", "utf-8")
    report = build(settings, embedder)
    assert report.generation == 3, "a new build gets a new number, not the rolled-back one"
    assert engine.reload_if_changed()
    assert engine.data.generation == 3 and engine.data.document("v3.md") is not None
    assert current_generation_dir(Path(settings.index_dir)).name == "gen-000003"


def test_top_k_setting_is_the_default_everywhere(engine: Engine) -> None:
    engine.settings.top_k = 2
    with TestClient(create_app(engine.settings, engine, load=False)) as client:
        body = client.post("/v1/ask", json={"question": "NATO partners"}).json()
        assert len(body["passages"]) == 2
        body = client.get("/v1/ask", params={"question": "NATO partners"}).json()
        assert len(body["passages"]) == 2


def test_unknown_fields_are_refused_not_ignored(engine: Engine) -> None:
    with TestClient(create_app(engine.settings, engine, load=False)) as client:
        resp = client.post("/v1/ask", json={"question": "NATO", "filters": {"docid": ["x"]}})
        assert resp.status_code == 422
        assert "filters.docid is not a known field" in resp.json()["error"]["message"]
        resp = client.post("/v1/ask", json={"question": "NATO", "topk": 3})
        assert resp.status_code == 422 and "topk" in resp.json()["error"]["message"]
        empty = client.post("/v1/ask", headers={"content-type": "application/json"})
        assert empty.status_code == 422
        assert "JSON request body is required" in empty.json()["error"]["message"]


def test_a_lone_surrogate_is_a_bad_request_not_a_crash(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="Unicode"):
        engine.ask("alpha \ud800 reactor")
    with TestClient(create_app(engine.settings, engine, load=False)) as client:
        resp = client.post(
            "/v1/ask",
            content=b'{"question": "alpha \\ud800 reactor"}',
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 422 and "Unicode" in resp.json()["error"]["message"]


def test_pdf_chunks_never_cross_a_page(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    make_pdf(corpus / "fruit.pdf", ["Apples are red.", "Pears are green.", "Bananas are yellow."])
    (doc,) = load_corpus(corpus).documents
    chunks = Chunker(FakeEmbedder().count_tokens, 200, 20).chunk(doc).chunks
    assert [(c.page, c.text) for c in chunks] == [
        (1, "Apples are red."),
        (2, "Pears are green."),
        (3, "Bananas are yellow."),
    ]


def test_html_table_cells_and_docx_tables_keep_their_text(tmp_path: Path) -> None:
    import docx

    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "t.html").write_text(
        "<html><body><table><tr><td>Cell</td><td>Value</td></tr></table></body></html>", "utf-8"
    )
    d = docx.Document()
    d.add_paragraph("Before the table.")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "TableCellA"
    table.rows[0].cells[1].text = "TableCellB"
    d.add_paragraph("After the table.")
    d.save(str(corpus / "r.docx"))
    docs = {x.doc_id: x for x in load_corpus(corpus).documents}
    assert "Cell Value" in docs["t.html"].text
    text = docs["r.docx"].text
    assert text.index("Before") < text.index("TableCellA | TableCellB") < text.index("After")


def test_one_bad_beir_row_skips_only_itself(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    rows = [
        json.dumps({"_id": "ok", "text": "A good row."}),
        '{"_id": "bad", "text": "broken \\ud800 text"}',
        json.dumps({"_id": "ok2", "text": "Another good row."}),
    ]
    (corpus / "b.jsonl").write_text("\n".join(rows) + "\n", "utf-8")
    assert [d.doc_id for d in load_corpus(corpus).documents] == ["b.jsonl#ok", "b.jsonl#ok2"]


def test_freshness_needs_the_corpus_folder(settings: Settings, tmp_path: Path) -> None:
    build(settings, FakeEmbedder())
    with pytest.raises(QAError, match="does not exist"):
        index_freshness(
            tmp_path / "missing", Path(settings.index_dir), spec_from_settings(settings)
        )
    (Path(settings.corpus_dir) / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    state, why = index_freshness(
        Path(settings.corpus_dir), Path(settings.index_dir), spec_from_settings(settings)
    )
    assert state == "stale" and "cannot be read" in why


def test_a_bom_is_not_content_and_offsets_point_into_the_served_text(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    raw = "\ufeffTitle line\r\nBody sentence here.\r\n"
    (corpus / "bom.txt").write_bytes(raw.encode("utf-8"))
    (doc,) = load_corpus(corpus).documents
    assert doc.text == "Title line\nBody sentence here.\n"  # what GET /v1/documents serves
    assert doc.title == "Title line"
    for chunk in Chunker(FakeEmbedder().count_tokens, 50, 0).chunk(doc).chunks:
        assert doc.text[chunk.start : chunk.end] == chunk.text


def test_bm25_keeps_numbered_identifiers_whole() -> None:
    from qa.lexical import BM25Index, tokenize

    (terms,) = tokenize(["Install libcurl3-gnutls 7.88.1 or python3.11, not libcurl4."])
    assert {"libcurl3-gnutls", "7.88.1", "python3.11"} <= set(terms)
    assert "gnutl" in terms  # the parts are still there for partial matches
    index = BM25Index.build(
        ["libcurl3-gnutls is the GnuTLS flavour", "libgnutls30 is GnuTLS itself", "gnutls-bin"]
    )
    scores = index.scores("what does libcurl3-gnutls provide")
    assert scores.argmax() == 0
