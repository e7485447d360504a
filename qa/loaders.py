"""Load: turn the files of a corpus folder into Documents.

Supported: .txt .md .markdown .html .htm .pdf .docx and .jsonl in BEIR form.
A file that cannot be read is skipped and reported, never fatal for the build.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qa.documents import Document

if TYPE_CHECKING:
    from qa.extraction import CorpusLimits, Extractor

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx", ".jsonl"}

_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


class SkipFile(Exception):
    """Raised by a reader when a file cannot be turned into a document."""


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class LoadReport:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_rows(self) -> list[dict[str, str]]:
        """The skipped files as the manifest and build reports list them."""
        return [{"path": s.path, "reason": s.reason} for s in self.skipped]


def load_corpus(
    corpus_dir: Path, limits: CorpusLimits | None = None, extractor: Extractor | None = None
) -> LoadReport:
    """Load every supported file below ``corpus_dir`` (hidden files and folders excluded).

    Nothing outside the corpus is read (qa.corpus_files) and each file is read within
    ``limits`` by ``extractor``'s worker process (qa.extraction; default: the settings'
    limits and the process-wide extractor). What cannot be read is skipped with the reason.
    """
    from qa.corpus_files import discover
    from qa.extraction import CorpusLimits, shared_extractor

    limits = limits or CorpusLimits.from_settings()
    extractor = extractor or shared_extractor()
    found = discover(corpus_dir, SUFFIXES, follow_external=limits.follow_external_symlinks)
    report = LoadReport(skipped=[Skipped(rel, reason) for rel, reason in found.skipped])
    seen: set[str] = set()
    for file, docs in extractor.extract_many(found.files, found.root, limits):
        if isinstance(docs, SkipFile):
            log.warning("skipped %s: %s", file.rel, docs)
            report.skipped.append(Skipped(file.rel, str(docs)))
            continue
        for doc in docs:
            if doc.doc_id in seen:
                report.skipped.append(Skipped(doc.doc_id, "duplicate document id"))
                continue
            seen.add(doc.doc_id)
            report.documents.append(doc)
    report.skipped.sort(key=lambda s: (s.path, s.reason))
    return report


def load_file(path: Path, rel: str) -> Iterator[Document]:
    """Documents of the file at ``path``, read as the type ``rel`` (its path in the corpus)
    names; raises SkipFile with the reason when it cannot be read."""
    suffix = Path(rel).suffix.lower()  # a link is read as what its name says
    if suffix in TEXT_SUFFIXES:
        yield _load_text(path, rel, markdown=suffix != ".txt")
    elif suffix in HTML_SUFFIXES:
        yield _load_html(path, rel)
    elif suffix == ".pdf":
        yield _load_pdf(path, rel)
    elif suffix == ".docx":
        yield _load_docx(path, rel)
    elif suffix == ".jsonl":
        yield from _load_beir_jsonl(path, rel)
    else:
        raise SkipFile(f"unsupported file type {suffix!r}")


def decode_text(data: bytes) -> str:
    """UTF-8 text with only CRLF turned into LF, so offsets match the file (a byte-order
    mark stays, as the character U+FEFF at offset 0)."""
    if b"\x00" in data:
        raise SkipFile("binary file (contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkipFile(f"not valid UTF-8 (byte {exc.start}): {exc.reason}") from None
    text = text.replace("\r\n", "\n")
    if not text.strip().strip("\ufeff"):
        raise SkipFile("empty document")
    return text


def _title_from_name(rel: str) -> str:
    stem = Path(rel).stem
    return re.sub(r"[-_]+", " ", stem).strip() or rel


def _load_text(path: Path, rel: str, *, markdown: bool) -> Document:
    text = decode_text(path.read_bytes())
    title = ""
    if markdown:
        m = _MD_HEADING.search(text)
        if m:
            title = m.group(2).strip()
    else:
        first = text.strip().strip("\ufeff").split("\n", 1)[0].strip()
        if 0 < len(first) <= 150 and not first.endswith((".", ",", ";")):
            title = first
    return Document(doc_id=rel, path=rel, title=title or _title_from_name(rel), text=text)


_BLOCK_TAGS = {
    "p", "div", "section", "article", "header", "footer", "main", "aside", "nav",
    "ul", "ol", "li", "table", "tr", "blockquote", "pre", "figure", "figcaption",
    "h1", "h2", "h3", "h4", "h5", "h6", "br", "hr", "dl", "dt", "dd", "form",
}  # fmt: skip
_DROP_TAGS = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object"}


def _load_html(path: Path, rel: str) -> Document:
    from bs4 import BeautifulSoup
    from bs4.element import NavigableString, Tag

    raw = path.read_bytes()
    if b"\x00" in raw:
        raise SkipFile("binary file (contains NUL bytes)")
    soup = BeautifulSoup(raw, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(list(_DROP_TAGS)):
        tag.decompose()
    root = soup.body or soup
    parts: list[str] = []

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # skip comments, doctypes, CDATA
                    parts.append(re.sub(r"\s+", " ", str(child)))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower()
            if name in {"h1", "h2", "h3", "h4", "h5", "h6"}:
                heading = child.get_text(" ", strip=True)
                if heading:
                    parts.append(f"\n\n{'#' * int(name[1])} {heading}\n\n")
                continue
            if name in {"td", "th"}:
                parts.append(" ")  # cells of a row stay on one line, never glued together
            block = name in _BLOCK_TAGS
            if block:
                parts.append("\n\n" if name not in {"li", "br", "tr", "dt", "dd"} else "\n")
            if name == "li":
                parts.append("- ")
            walk(child)
            if block and name not in {"br", "li", "tr", "dt", "dd"}:
                parts.append("\n\n")

    walk(root)
    text = "".join(parts)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n[ \t]+", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    if not text.strip():
        raise SkipFile("HTML has no visible text")
    if not title:
        m = _MD_HEADING.search(text)
        title = m.group(2).strip() if m else ""
    return Document(doc_id=rel, path=rel, title=title or _title_from_name(rel), text=text)


def _load_pdf(path: Path, rel: str) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "") for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise SkipFile(f"broken PDF: {exc}") from None
    page_starts: list[int] = []
    chunks: list[str] = []
    offset = 0
    for page_text in pages:
        page_text = page_text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
        page_starts.append(offset)
        chunks.append(page_text)
        offset += len(page_text) + 2
    text = "\n\n".join(chunks)
    if not text.strip():
        raise SkipFile("PDF has no extractable text (scanned images need OCR)")
    title = str(meta_title).strip()
    if not title:
        first = text.strip().split("\n", 1)[0].strip()
        title = first if len(first) <= 150 else ""
    return Document(
        doc_id=rel,
        path=rel,
        title=title or _title_from_name(rel),
        text=text,
        page_starts=tuple(page_starts),
    )


def _load_docx(path: Path, rel: str) -> Document:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise SkipFile(f"broken DOCX: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise SkipFile(f"broken DOCX: {type(exc).__name__}: {exc}") from None
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    blocks: list[str] = []
    first_heading = ""
    for child in document.element.body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "tbl":  # tables in reading order, one line a row
            for row in Table(child, document).rows:
                cells = [c.text.strip() for c in row.cells]
                line = " | ".join(c for c in cells if c)
                if line:
                    blocks.append(line)
            continue
        if tag != "p":
            continue
        para = Paragraph(child, document)
        content = para.text.strip()
        if not content:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        level = 0
        if style == "Title":
            level = 1
        elif style.startswith("Heading"):
            digits = style.removeprefix("Heading").strip()
            level = int(digits) if digits.isdigit() else 1
        if level:
            first_heading = first_heading or content
            blocks.append(f"{'#' * min(level, 6)} {content}")
        else:
            blocks.append(content)
    text = "\n\n".join(blocks)
    if not text.strip():
        raise SkipFile("DOCX has no text")
    title = (document.core_properties.title or "").strip() or first_heading
    return Document(doc_id=rel, path=rel, title=title or _title_from_name(rel), text=text + "\n")


def _load_beir_jsonl(path: Path, rel: str) -> Iterator[Document]:
    """BEIR corpus lines: {"_id", "title", "text"}. Bad lines are logged and skipped."""
    text = decode_text(path.read_bytes())
    good = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            doc_id = str(row["_id"])
            body = str(row.get("text") or "")
            title = str(row.get("title") or "")
            content = f"{title}\n\n{body}" if title and body else (body or title)
            if not content.strip():
                continue
            doc = Document(doc_id=f"{rel}#{doc_id}", path=rel, title=title or doc_id, text=content)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeError) as exc:
            log.warning("skipped %s line %d: not a BEIR document (%s)", rel, lineno, exc)
            continue
        good += 1
        yield doc
    if not good:
        raise SkipFile("no BEIR documents ({'_id', 'title', 'text'} per line) in the file")
