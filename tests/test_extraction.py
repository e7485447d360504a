"""Bounded work per file: every limit refuses a hostile file (generated here) with a reason
naming its setting, before the costly step, and the build goes on; the reader process
survives files that hang, exhaust memory or crash it."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from qa.assemble import spec_from_settings
from qa.builder import build_index, index_freshness
from qa.corpus_files import CorpusFile
from qa.extraction import MB, CorpusLimits, Extractor, extract_file, html_depth
from qa.loaders import LoadReport, SkipFile, load_corpus
from qa.settings import Settings
from tests.fakes import FakeEmbedder
from tests.test_loaders import make_docx, make_pdf


def make_zip_bomb(path: Path, inflated: int) -> None:
    """A .docx-shaped zip whose word/document.xml is ``inflated`` bytes of zeros
    (deflate packs them about 1,000:1)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with z.open("word/document.xml", "w", force_zip64=True) as member:
            block = b"\0" * MB
            for _ in range(inflated // MB):
                member.write(block)


def reasons(report: LoadReport) -> dict[str, str]:
    return {s.path: s.reason for s in report.skipped}


@pytest.fixture
def no_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any zip member is opened for reading (inflated) in this process."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a zip member was opened for reading")

    monkeypatch.setattr(zipfile.ZipExtFile, "__init__", refuse)


def test_zip_bomb_is_refused_from_the_directory_before_inflating(
    tmp_path: Path, no_inflating: None
) -> None:
    bomb = tmp_path / "bomb.docx"
    make_zip_bomb(bomb, 64 * MB)
    assert bomb.stat().st_size < MB
    with pytest.raises(SkipFile) as refused:
        extract_file(bomb, "bomb.docx", tmp_path, CorpusLimits())
    reason = str(refused.value)
    assert "word/document.xml" in reason
    assert "QA_MAX_ZIP_RATIO" in reason
    assert "not inflated" in reason


def test_zip_over_the_uncompressed_limit_is_refused(tmp_path: Path, no_inflating: None) -> None:
    bomb = tmp_path / "big.docx"
    make_zip_bomb(bomb, 8 * MB)
    limits = CorpusLimits(max_unzipped_bytes=4 * MB, max_zip_ratio=10_000)
    with pytest.raises(SkipFile, match=r"QA_MAX_UNZIPPED_MB\); not inflated"):
        extract_file(bomb, "big.docx", tmp_path, limits)


def test_zip_bomb_in_a_corpus_is_skipped_and_the_rest_is_read(corpus_dir: Path) -> None:
    make_zip_bomb(corpus_dir / "bomb.docx", 64 * MB)
    make_docx(corpus_dir / "manual.docx")
    report = load_corpus(corpus_dir, CorpusLimits())
    assert "QA_MAX_ZIP_RATIO" in reasons(report)["bomb.docx"]
    assert {d.doc_id for d in report.documents} == {
        "nato-indo-pacific.txt",
        "notes/baking.md",
        "manual.docx",
    }


def test_huge_one_line_file_is_refused_by_its_size_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "one-line.txt"
    big.write_bytes(b"a" * (3 * MB))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was read")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    limits = CorpusLimits(max_file_bytes=2 * MB)
    with pytest.raises(SkipFile, match=r"file is 3.0 MB, over the 2.0 MB limit \(QA_MAX_FILE_MB\)"):
        extract_file(big, "one-line.txt", tmp_path, limits)


def test_extracted_text_over_the_limit_is_refused(corpus_dir: Path) -> None:
    report = load_corpus(corpus_dir, CorpusLimits(max_text_chars=1000))
    assert "QA_MAX_TEXT_CHARS" in reasons(report)["nato-indo-pacific.txt"]  # 4,5 KB of text
    assert [d.doc_id for d in report.documents] == ["notes/baking.md"]


def test_deep_html_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / "deep.html"
    deep.write_text("<html><body>" + "<div>" * 5000 + "deep" + "</div>" * 5000, "utf-8")
    import bs4

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the HTML was parsed")

    monkeypatch.setattr(bs4, "BeautifulSoup", refuse)
    with pytest.raises(SkipFile, match=r"deeper than 512 elements \(QA_MAX_HTML_DEPTH\)"):
        extract_file(deep, "deep.html", tmp_path, CorpusLimits())


def test_html_under_the_depth_limit_is_read(corpus_dir: Path) -> None:
    html = "<html><body>" + "<div>" * 500 + "<p>Deep but allowed.</p>" + "</div>" * 500
    (corpus_dir / "deepish.html").write_text(html, "utf-8")
    report = load_corpus(corpus_dir, CorpusLimits())
    assert "deepish.html" not in reasons(report)
    (doc,) = [d for d in report.documents if d.doc_id == "deepish.html"]
    assert doc.text.strip() == "Deep but allowed."


@pytest.mark.parametrize(
    ("html", "depth"),
    [
        (b"<html><body><p>a</p><p>b</p></body></html>", 3),
        (b"<p>a<p>b<p>c", 3),  # unclosed <p> nests, as html.parser builds it
        (b"<div><br><img src=x><hr/><input></div>", 1),  # void and self-closed elements
        (b"<div><script>if (a<b) { '<div><div><div>' }</script></div>", 2),
        (b"<div><!-- <div><div><div> --></div>", 1),
        (b"<div><span></div></span><div></div>", 2),  # a stray end tag is ignored
        (b"<DIV><Div></div></DIV>", 2),
    ],
)
def test_html_depth_counts_what_the_parser_builds(html: bytes, depth: int) -> None:
    assert html_depth(html, 100) == depth


def test_html_depth_stops_at_the_limit() -> None:
    raw = b"<div>" * 1_000_000
    began = time.perf_counter()
    assert html_depth(raw, 512) == 513
    assert time.perf_counter() - began < 1.0


def test_pdf_over_the_page_limit_is_refused(tmp_path: Path) -> None:
    pdf = tmp_path / "long.pdf"
    make_pdf(pdf, [f"Page {i} says hello." for i in range(1, 6)])
    with pytest.raises(SkipFile, match=r"PDF has 5 pages, over the 4 limit \(QA_MAX_PDF_PAGES\)"):
        extract_file(pdf, "long.pdf", tmp_path, CorpusLimits(max_pdf_pages=4))
    (doc,) = extract_file(pdf, "long.pdf", tmp_path, CorpusLimits(max_pdf_pages=5))
    assert len(doc.page_starts) == 5


def corpus_with(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_text(f"{name} is a note about rivers and bridges.\n", "utf-8")
    return root


def test_a_file_that_hangs_its_reader_times_out_and_the_build_completes(tmp_path: Path) -> None:
    corpus = corpus_with(tmp_path / "c", "a.txt", "hang.txt", "z.txt")
    extractor = Extractor(preload=["tests.hostile_readers"])
    limits = CorpusLimits(timeout_s=1.5)
    try:
        began = time.monotonic()
        loaded = load_corpus(corpus, limits, extractor)
        assert time.monotonic() - began < 30
    finally:
        extractor.close()
    assert reasons(loaded) == {
        "hang.txt": "reading took longer than 1.5 s (QA_EXTRACT_TIMEOUT); the reader was stopped"
    }
    assert [d.doc_id for d in loaded.documents] == ["a.txt", "z.txt"]
    assert extractor.starts == 2  # replaced after the timeout, reused otherwise
    index = tmp_path / "index"
    report = build_index(
        corpus, index, FakeEmbedder(), spec_from_settings(Settings()), loaded=loaded
    )
    assert report.documents == 2
    assert report.skipped == [{"path": "hang.txt", "reason": loaded.skipped[0].reason}]


def test_a_file_that_exhausts_the_memory_cap_or_crashes_the_reader_is_skipped(
    tmp_path: Path,
) -> None:
    corpus = corpus_with(tmp_path / "c", "a.txt", "crash.txt", "hog.txt", "z.txt")
    extractor = Extractor(preload=["tests.hostile_readers"])
    try:
        loaded = load_corpus(corpus, CorpusLimits(memory_bytes=512 * MB), extractor)
    finally:
        extractor.close()
    why = reasons(loaded)
    assert why["hog.txt"] == (
        "reading needed more than 512 MB of memory (QA_EXTRACT_MEMORY_MB); the reader was stopped"
    )
    assert (
        why["crash.txt"]
        == "the reader process ended while reading the file (killed by signal SIGSEGV)"
    )
    assert [d.doc_id for d in loaded.documents] == ["a.txt", "z.txt"]


def test_a_worker_left_holding_much_memory_is_replaced(tmp_path: Path) -> None:
    corpus = corpus_with(tmp_path / "c", "a.txt", "keep.txt", "z.txt")
    extractor = Extractor(preload=["tests.hostile_readers"])
    try:
        loaded = load_corpus(corpus, CorpusLimits(), extractor)
    finally:
        extractor.close()
    assert [d.doc_id for d in loaded.documents] == ["a.txt", "keep.txt", "z.txt"]
    assert extractor.starts == 2


def test_one_worker_reads_every_file(corpus_dir: Path) -> None:
    extractor = Extractor()
    try:
        load_corpus(corpus_dir, CorpusLimits(), extractor)
        load_corpus(corpus_dir, CorpusLimits(), extractor)
    finally:
        extractor.close()
    assert extractor.starts == 1


def test_status_reads_the_corpus_within_the_limits(tmp_path: Path, corpus_dir: Path) -> None:
    """`qa index status` and updates load the corpus as a build does: a bomb added after the
    build makes the index stale through the skip list, without being inflated."""
    settings = Settings(corpus_dir=corpus_dir, index_dir=tmp_path / "index")
    spec = spec_from_settings(settings)
    spec = type(spec)("fake-embedder", spec.chunk_tokens, spec.chunk_overlap_tokens)
    build_index(corpus_dir, settings.index_dir, FakeEmbedder(), spec, limits=CorpusLimits())
    make_zip_bomb(corpus_dir / "bomb.docx", 64 * MB)
    assert index_freshness(corpus_dir, settings.index_dir, spec, CorpusLimits()) == (
        "stale",
        "the files that cannot be read changed",
    )


def test_limits_come_from_the_settings() -> None:
    settings = Settings(
        max_file_mb=1,
        max_text_chars=10,
        max_unzipped_mb=2,
        max_zip_ratio=3,
        max_pdf_pages=4,
        max_html_depth=5,
        extract_timeout=6,
        extract_memory_mb=700,
        follow_external_symlinks=True,
    )
    assert CorpusLimits.from_settings(settings) == CorpusLimits(
        max_file_bytes=MB,
        max_text_chars=10,
        max_unzipped_bytes=2 * MB,
        max_zip_ratio=3,
        max_pdf_pages=4,
        max_html_depth=5,
        timeout_s=6,
        memory_bytes=700 * MB,
        follow_external_symlinks=True,
    )


def test_extract_takes_a_corpus_file(tmp_path: Path) -> None:
    corpus_with(tmp_path, "a.txt")
    extractor = Extractor()
    try:
        (doc,) = extractor.extract(
            CorpusFile("a.txt", tmp_path / "a.txt"), tmp_path.resolve(), CorpusLimits()
        )
    finally:
        extractor.close()
    assert doc.text == "a.txt is a note about rivers and bridges.\n"
