from __future__ import annotations

import json
from pathlib import Path

import pytest

from qa.chunker import Chunker
from qa.loaders import load_corpus
from tests.fakes import FakeEmbedder


def make_pdf(path: Path, pages: list[str], title: str | None = None) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    if title:
        c.setTitle(title)
    for page in pages:
        y = 800
        for line in page.split("\n"):
            c.drawString(72, y, line)
            y -= 16
        c.showPage()
    c.save()


def make_docx(path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Field Manual", level=1)
    d.add_paragraph("Radios must be charged before every patrol.")
    d.add_heading("Maintenance", level=2)
    d.add_paragraph("Clean the antenna contacts weekly. Replace worn cables at once.")
    d.save(str(path))


@pytest.fixture
def mixed_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "c"
    (root / "sub").mkdir(parents=True)
    (root / "plain.txt").write_bytes(b"Plain title\r\nFirst line.\r\nSecond line here.\r\n")
    (root / "sub" / "guide.md").write_text(
        "# Guide Title\n\nIntro text.\n\n## Part Two\n\nMore text in part two.\n", "utf-8"
    )
    (root / "page.html").write_text(
        "<html><head><title>Html Title</title><script>var x = 1;</script></head>"
        "<body><h1>Main</h1><p>Hello &amp; welcome to <b>the</b> page.</p>"
        "<ul><li>one</li><li>two</li></ul></body></html>",
        "utf-8",
    )
    make_pdf(root / "report.pdf", ["Page one says alpha.", "Page two says beta."], "Pdf Title")
    make_docx(root / "manual.docx")
    (root / "beir.jsonl").write_text(
        json.dumps({"_id": "d1", "title": "T1", "text": "Body one."})
        + "\n"
        + json.dumps({"_id": "d2", "title": "", "text": "Body two."})
        + "\nnot json\n",
        "utf-8",
    )
    # files that must be skipped, each with a reason
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "empty.md").write_text("   \n\n", "utf-8")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (root / "broken.docx").write_bytes(b"PK not a zip")
    (root / ".hidden.txt").write_text("hidden", "utf-8")
    (root / "image.png").write_bytes(b"\x89PNG")
    return root


def test_loads_every_format_and_skips_bad_files(mixed_corpus: Path) -> None:
    report = load_corpus(mixed_corpus)
    docs = {d.doc_id: d for d in report.documents}
    assert set(docs) == {
        "plain.txt",
        "sub/guide.md",
        "page.html",
        "report.pdf",
        "manual.docx",
        "beir.jsonl#d1",
        "beir.jsonl#d2",
    }
    skipped = {s.path: s.reason for s in report.skipped}
    assert set(skipped) == {
        "binary.txt",
        "latin1.txt",
        "empty.md",
        "broken.pdf",
        "broken.docx",
        "beir.jsonl",  # its row on line 3 is not JSON; rows 1 and 2 are indexed
    }
    assert skipped["beir.jsonl"].startswith("line 3: not a BEIR document")
    assert "binary" in skipped["binary.txt"]
    assert "UTF-8" in skipped["latin1.txt"]
    assert "empty" in skipped["empty.md"]
    assert "PDF" in skipped["broken.pdf"]
    assert "DOCX" in skipped["broken.docx"]


def test_text_is_the_file_content_with_only_crlf_changed(mixed_corpus: Path) -> None:
    docs = {d.doc_id: d for d in load_corpus(mixed_corpus).documents}
    raw = (mixed_corpus / "plain.txt").read_bytes().decode("utf-8")
    assert docs["plain.txt"].text == raw.replace("\r\n", "\n")
    assert docs["sub/guide.md"].text == (mixed_corpus / "sub" / "guide.md").read_text("utf-8")


def test_titles_come_from_the_document(mixed_corpus: Path) -> None:
    docs = {d.doc_id: d for d in load_corpus(mixed_corpus).documents}
    assert docs["plain.txt"].title == "Plain title"
    assert docs["sub/guide.md"].title == "Guide Title"
    assert docs["page.html"].title == "Html Title"
    assert docs["report.pdf"].title == "Pdf Title"
    assert docs["manual.docx"].title == "Field Manual"
    assert docs["beir.jsonl#d1"].title == "T1"
    assert docs["beir.jsonl#d2"].title == "d2"


def test_html_drops_scripts_and_keeps_structure(mixed_corpus: Path) -> None:
    doc = next(d for d in load_corpus(mixed_corpus).documents if d.doc_id == "page.html")
    assert "var x" not in doc.text
    assert "# Main" in doc.text
    assert "Hello & welcome to the page." in doc.text
    assert "- one\n- two" in doc.text


def test_pdf_keeps_page_numbers(mixed_corpus: Path) -> None:
    doc = next(d for d in load_corpus(mixed_corpus).documents if d.doc_id == "report.pdf")
    assert doc.page_at(doc.text.index("alpha")) == 1
    assert doc.page_at(doc.text.index("beta")) == 2
    chunker = Chunker(FakeEmbedder().count_tokens, max_tokens=4, overlap_tokens=0)
    pages = {c.page for c in chunker.chunk(doc).chunks}
    assert pages == {1, 2}


def test_docx_headings_become_heading_paths(mixed_corpus: Path) -> None:
    doc = next(d for d in load_corpus(mixed_corpus).documents if d.doc_id == "manual.docx")
    chunker = Chunker(FakeEmbedder().count_tokens, max_tokens=20, overlap_tokens=0)
    chunks = chunker.chunk(doc).chunks
    assert any(c.heading == "Field Manual > Maintenance" and "antenna" in c.text for c in chunks)


def test_every_format_keeps_the_offset_invariant(mixed_corpus: Path) -> None:
    chunker = Chunker(FakeEmbedder().count_tokens, max_tokens=12, overlap_tokens=4)
    for doc in load_corpus(mixed_corpus).documents:
        for chunk in chunker.chunk(doc).chunks:
            assert doc.text[chunk.start : chunk.end] == chunk.text, doc.doc_id
            assert chunk.text.strip()
