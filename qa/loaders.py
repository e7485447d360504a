"""Load: turn the files of a corpus folder into Documents.

Supported: .txt .md .markdown .html .htm .pdf .docx and .jsonl in BEIR form.
A file that cannot be read is skipped and reported, never fatal for the build; so is a
BEIR row that cannot be read, and a part of a DOCX file (its footnotes, a header) that
cannot be read is reported while the rest of the file is indexed.

Text files: a UTF-8 byte-order mark is dropped and CRLF and lone CR become LF, so offsets
point into exactly the text ``GET /v1/documents`` serves. Markdown is parsed with
markdown-it-py; HTML, DOCX and Markdown readers record their blocks and real headings on
the Document (``Document.blocks``) for the chunker.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa.documents import Block, Document

if TYPE_CHECKING:
    from qa.extraction import CorpusLimits, Extractor

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx", ".jsonl"}


class SkipFile(Exception):
    """Raised by a reader when a file cannot be turned into a document."""


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class FileStamp:
    """What an index knows of a corpus file it read: size, modification and status-change
    times (ns) and inode, as git's index keeps them (a tool that sets the modification
    time back after an edit still changes the status-change time), the (doc id, sha256)
    of the documents it gave, and the (path, reason) of what inside it could not be read
    (BEIR rows, DOCX parts). A stamp without ctime or inode (-1) never matches a file."""

    size: int
    mtime_ns: int
    docs: tuple[tuple[str, str], ...]
    problems: tuple[tuple[str, str], ...] = ()
    ctime_ns: int = -1
    ino: int = -1

    def key(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.ctime_ns, self.ino)

    def as_json(self) -> dict[str, object]:
        return {
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "ino": self.ino,
            "docs": [list(d) for d in self.docs],
            "problems": [list(p) for p in self.problems],
        }

    @classmethod
    def from_json(cls, row: Mapping[str, object]) -> FileStamp:
        docs = row.get("docs", [])
        problems = row.get("problems", [])
        assert isinstance(docs, list) and isinstance(problems, list)
        return cls(
            int(str(row["size"])),
            int(str(row["mtime_ns"])),
            tuple((str(d[0]), str(d[1])) for d in docs),
            tuple((str(p[0]), str(p[1])) for p in problems),
            int(str(row.get("ctime_ns", -1))),
            int(str(row.get("ino", -1))),
        )


@dataclass
class LoadReport:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # (doc id, sha256) of documents of files not read again: unchanged since the index
    kept: list[tuple[str, str]] = field(default_factory=list)
    stamps: dict[str, FileStamp] = field(default_factory=dict)  # every file read or kept

    def skipped_rows(self) -> list[dict[str, str]]:
        """The skipped files as the manifest and build reports list them."""
        return [{"path": s.path, "reason": s.reason} for s in self.skipped]


def load_corpus(
    corpus_dir: Path,
    limits: CorpusLimits | None = None,
    extractor: Extractor | None = None,
    known: Mapping[str, FileStamp] | None = None,
    trust_before_ns: int = 0,
) -> LoadReport:
    """Load every supported file below ``corpus_dir`` (hidden files and folders excluded).

    Nothing outside the corpus is read (qa.corpus_files) and each file is read within
    ``limits`` by ``extractor``'s worker process (qa.extraction; default: the settings'
    limits and the process-wide extractor). What cannot be read is skipped with the reason.

    A file ``known`` with the same size, times and inode is not read again: its
    documents are listed in ``kept`` (id and hash) and its problems re-reported, as git
    trusts its index. Only a time before ``trust_before_ns`` is trusted (the start of the
    scan that made the stamp, less the coarsest file-time granularity), so a file written
    in the same tick as that scan is always read ("racy" in git's terms).
    """
    from qa.corpus_files import discover
    from qa.extraction import CorpusLimits, shared_extractor

    limits = limits or CorpusLimits.from_settings()
    extractor = extractor or shared_extractor()
    found = discover(corpus_dir, SUFFIXES, follow_external=limits.follow_external_symlinks)
    report = LoadReport(skipped=[Skipped(rel, reason) for rel, reason in found.skipped])
    seen: set[str] = set()
    to_read = []
    stats: dict[str, tuple[int, int, int, int]] = {}
    for file in found.files:
        try:
            st = os.stat(file.path)
        except OSError:
            to_read.append(file)
            continue
        stats[file.rel] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        stamp = known.get(file.rel) if known else None
        if (
            stamp is not None
            and stamp.key() == stats[file.rel]
            and st.st_mtime_ns < trust_before_ns
            and not seen.intersection(d for d, _ in stamp.docs)
        ):
            report.kept.extend(stamp.docs)
            seen.update(d for d, _ in stamp.docs)
            report.skipped.extend(Skipped(p, r) for p, r in stamp.problems)
            report.stamps[file.rel] = stamp
        else:
            to_read.append(file)
    for file, docs in extractor.extract_many(to_read, found.root, limits):
        if isinstance(docs, SkipFile):
            log.warning("skipped %s: %s", file.rel, docs)
            report.skipped.append(Skipped(file.rel, str(docs)))
            continue
        problems = list(getattr(docs, "problems", []))  # unreadable rows or parts
        report.skipped.extend(problems)
        accepted = []
        duplicates = False
        for doc in docs:
            if doc.doc_id in seen:
                report.skipped.append(Skipped(doc.doc_id, "duplicate document id"))
                duplicates = True
                continue
            seen.add(doc.doc_id)
            report.documents.append(doc)
            accepted.append((doc.doc_id, doc.sha256))
        if file.rel in stats and not duplicates:  # a file with duplicates is read every time
            size, mtime_ns, ctime_ns, ino = stats[file.rel]
            report.stamps[file.rel] = FileStamp(
                size,
                mtime_ns,
                tuple(accepted),
                tuple((s.path, s.reason) for s in problems),
                ctime_ns,
                ino,
            )
    report.skipped.sort(key=lambda s: (s.path, s.reason))
    return report


def load_file(path: Path, rel: str, problems: list[Skipped] | None = None) -> Iterator[Document]:
    """Documents of the file at ``path``, read as the type ``rel`` (its path in the corpus)
    names; raises SkipFile with the reason when it cannot be read.

    What could not be read inside a file that is otherwise indexed (a BEIR row, a DOCX
    part) is appended to ``problems`` (path ``rel``, the reason naming the line or part).
    """
    problems = problems if problems is not None else []
    suffix = Path(rel).suffix.lower()  # a link is read as what its name says
    if suffix in TEXT_SUFFIXES:
        yield _load_text(path, rel, markdown=suffix != ".txt")
    elif suffix in HTML_SUFFIXES:
        yield _load_html(path, rel)
    elif suffix == ".pdf":
        yield _load_pdf(path, rel)
    elif suffix == ".docx":
        yield _load_docx(path, rel, problems)
    elif suffix == ".jsonl":
        yield from _load_beir_jsonl(path, rel, problems)
    else:
        raise SkipFile(f"unsupported file type {suffix!r}")


def decode_text(data: bytes) -> str:
    """UTF-8 text without a leading byte-order mark (it is not content), every line end
    (CRLF, lone CR) an LF; a character offset into the result is the offset into the
    document text served by ``GET /v1/documents``. Raises SkipFile for binary data,
    invalid UTF-8 (naming the byte) or a file with nothing but whitespace."""
    if b"\x00" in data:
        raise SkipFile("binary file (contains NUL bytes)")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkipFile(f"not valid UTF-8 (byte {exc.start + bom}): {exc.reason}") from None
    text = normalize_line_ends(text)
    if not text.strip():
        raise SkipFile("empty document")
    return text


def normalize_line_ends(text: str) -> str:
    """CRLF and lone CR (old Mac files) become LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _title_from_name(rel: str) -> str:
    stem = Path(rel).stem
    return re.sub(r"[-_]+", " ", stem).strip() or rel


def _load_text(path: Path, rel: str, *, markdown: bool) -> Document:
    text = decode_text(path.read_bytes())
    title = ""
    blocks: tuple[Block, ...] = ()
    if markdown:
        blocks, title = markdown_blocks(text)
    else:
        first = text.strip().split("\n", 1)[0].strip()
        if 0 < len(first) <= 150 and not first.endswith((".", ",", ";", ":")):
            title = first
    return Document(
        doc_id=rel, path=rel, title=title or _title_from_name(rel), text=text, blocks=blocks
    )


def markdown_blocks(text: str) -> tuple[tuple[Block, ...], str]:
    """Leaf blocks of Markdown ``text`` as markdown-it-py (CommonMark + tables) parses it,
    from its source line maps: headings (with their level; ATX or setext), paragraphs,
    list items, block quotes' paragraphs, code fences and indented code (one block each),
    table rows, HTML blocks. A heading inside a quote or list item is body text. A line no
    block claims (a link reference definition, a table's delimiter row) is a block of its
    own, so no text is lost. Returns (blocks in order, the first heading's text).
    """
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]  # as markdown-it
    starts.append(len(text) + 1)
    n_lines = len(starts) - 1
    spans: list[tuple[int, int, int]] = []  # first line, end line (exclusive), level
    title = ""
    inside_table = 0
    for i, tok in enumerate(tokens):
        if tok.type == "table_open":
            inside_table += 1
        elif tok.type == "table_close":
            inside_table -= 1
        if tok.map is None:
            continue
        if tok.type == "heading_open":  # inside a quote or list item it labels nothing
            spans.append((tok.map[0], tok.map[1], int(tok.tag[1]) if tok.level == 0 else 0))
            if not title and tok.level == 0 and i + 1 < len(tokens):
                title = tokens[i + 1].content.strip()
        elif tok.type == "tr_open" or (
            not inside_table
            and tok.type in {"paragraph_open", "fence", "code_block", "html_block", "hr"}
        ):
            spans.append((tok.map[0], tok.map[1], 0))
    claimed = [False] * n_lines
    for a, b, _ in spans:
        for k in range(a, min(b, n_lines)):
            claimed[k] = True
    for k in range(n_lines):
        if not claimed[k] and text[starts[k] : starts[k + 1] - 1].strip():
            spans.append((k, k + 1, 0))
    spans.sort()
    blocks: list[Block] = []
    for a, b, level in spans:
        start, end = starts[a], min(starts[min(b, n_lines)] - 1, len(text))
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end <= start:
            continue
        if blocks and start < blocks[-1][1]:  # overlapping maps: one block, nothing lost
            prev = blocks.pop()
            start, end, level = prev[0], max(prev[1], end), prev[2]
        blocks.append((start, end, level))
    return tuple(blocks), title


_BLOCK_TAGS = {
    "p", "div", "section", "article", "header", "footer", "main", "aside", "nav",
    "ul", "ol", "li", "table", "tr", "blockquote", "pre", "figure", "figcaption",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "dl", "dt", "dd", "form", "address",
    "fieldset", "legend", "details", "summary", "caption", "dialog", "hgroup", "menu",
    "center", "search", "thead", "tbody", "tfoot", "option",
}  # fmt: skip
_TIGHT_TAGS = {"li", "tr", "dt", "dd", "option"}  # consecutive ones are not blank-separated
_DROP_TAGS = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object"}


class _BlockText:
    """Text written block by block: lines inside a block, blank lines between blocks
    (one line break between consecutive list items, table rows, definitions), with the
    offsets of every block and heading recorded as the text grows."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.blocks: list[Block] = []
        self.lines: list[str] = []  # finished lines of the open block
        self.line: list[str] = []  # pieces of the open line
        self.pre_line = False  # the open line holds preformatted text
        self.tight = False
        self.last_tight = False
        self.prefix = ""  # a list marker waiting for the item's first text

    def _marker(self, text: str) -> None:
        if self.prefix and text.strip():
            self.line.append(self.prefix)
            self.prefix = ""

    def inline(self, text: str) -> None:
        self._marker(text)
        self.line.append(re.sub(r"\s+", " ", text))

    def pre(self, text: str) -> None:
        self._marker(text)
        pieces = normalize_line_ends(text).split("\n")
        for k, piece in enumerate(pieces):
            if k:
                self.newline(keep_empty=True)
            self.line.append(piece)
            self.pre_line = True

    def newline(self, keep_empty: bool = False) -> None:
        raw = "".join(self.line)
        line = raw.rstrip() if self.pre_line else re.sub(" {2,}", " ", raw).strip()
        if line or (keep_empty and self.lines):
            self.lines.append(line)
        self.line, self.pre_line = [], False

    def end_block(self, level: int = 0, tight: bool = False) -> None:
        self.newline()
        while self.lines and not self.lines[-1].strip():
            self.lines.pop()
        if self.lines:
            self.write("\n".join(self.lines), level, tight or self.tight)
        self.lines, self.tight = [], False

    def write(self, block: str, level: int, tight: bool) -> None:
        if self.parts:
            sep = "\n" if tight and self.last_tight else "\n\n"
            self.parts.append(sep)
            self.size += len(sep)
        self.blocks.append((self.size, self.size + len(block), level))
        self.parts.append(block)
        self.size += len(block)
        self.last_tight = tight and not level

    def text(self) -> str:
        self.end_block()
        return "".join(self.parts)


def _load_html(path: Path, rel: str) -> Document:
    """Visible text of an HTML page: block elements end lines, ``<br>`` breaks a line,
    ``<pre>`` keeps its lines and indentation, headings become ``#`` lines, list items
    ``- `` lines, the cells of a table row one line."""
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
    out = _BlockText()
    first_heading = ""

    def walk(node: Tag, in_pre: bool, lists: int) -> None:
        nonlocal first_heading
        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # skip comments, doctypes, CDATA
                    (out.pre if in_pre else out.inline)(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower()
            if name in {"h1", "h2", "h3", "h4", "h5", "h6"}:
                heading = child.get_text(" ", strip=True)
                if heading:
                    out.end_block()
                    level = int(name[1])
                    out.lines = [f"{'#' * level} {heading}"]
                    out.end_block(level)
                    first_heading = first_heading or heading
                continue
            if name == "br":
                if in_pre:
                    out.pre("\n")
                else:
                    out.newline()
                continue
            if name in {"td", "th"} and out.line:
                out.inline(" ")  # cells of a row stay on one line, never glued together
            block = name in _BLOCK_TAGS
            if block:
                out.end_block()
                out.tight = name in _TIGHT_TAGS
            if name == "li":
                out.prefix = "- "
            walk(child, in_pre or name == "pre", lists + (name in {"ul", "ol"}))
            if block:
                out.end_block(tight=name in _TIGHT_TAGS)
                if name not in _TIGHT_TAGS and not lists:  # a blank line after a list
                    out.last_tight = False

    walk(root, False, 0)
    text = out.text()
    if not text.strip():
        raise SkipFile("HTML has no visible text")
    return Document(
        doc_id=rel,
        path=rel,
        title=title or first_heading or _title_from_name(rel),
        text=text + "\n",
        blocks=tuple(out.blocks),
    )


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


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_R_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
# never text a reader sees: deletions, field codes, properties, note reference marks
_DOCX_SKIP = {
    f"{_W}{name}"
    for name in (
        "del", "delText", "moveFrom", "instrText", "rPr", "pPr", "tblPr", "trPr", "tcPr",
        "sdtPr", "sdtEndPr", "footnoteReference", "endnoteReference", "commentReference",
        "annotationRef", "separator", "continuationSeparator",
    )
} | {_MC_FALLBACK}  # fmt: skip


def _docx_inline_text(element: Any) -> str:
    """The text of a paragraph as Word shows it: runs, hyperlinks, content controls,
    tracked insertions (not deletions), field results (not field codes); hidden runs
    (``w:vanish``) left out."""
    out: list[str] = []

    def walk(el: Any) -> None:
        for child in el:
            tag = child.tag
            if not isinstance(tag, str) or tag in _DOCX_SKIP:
                continue
            if tag == f"{_W}r":
                props = child.find(f"{_W}rPr")
                if props is not None and props.find(f"{_W}vanish") is not None:
                    continue
            if tag == f"{_W}t":
                out.append(child.text or "")
            elif tag == f"{_W}tab":
                out.append("\t")
            elif tag in (f"{_W}br", f"{_W}cr"):
                out.append("\n")
            elif tag == f"{_W}noBreakHyphen":
                out.append("-")
            elif tag == f"{_W}softHyphen":
                out.append("\u00ad")
            elif tag == f"{_W}p":  # a text box inside a run
                out.append("\n")
                walk(child)
            else:
                walk(child)

    walk(element)
    return "".join(out)


class _DocxText:
    """Blocks of a DOCX story (body, header, footer, note) in reading order: paragraphs
    (headings with their level), one line per table row with a merged cell's text once
    (a vertically merged cell repeats in each row it spans, once)."""

    def __init__(self, document: Any) -> None:
        from docx.text.paragraph import Paragraph

        self.document = document
        self.paragraph = Paragraph
        self.blocks: list[tuple[str, int]] = []

    def story(self, element: Any) -> None:
        for child in element:
            tag = child.tag
            if tag == f"{_W}p":
                self._paragraph(child)
            elif tag == f"{_W}tbl":
                self._table(child)
            elif tag in (f"{_W}sdt", f"{_W}sdtContent", f"{_W}customXml", f"{_W}ins"):
                self.story(child)

    def _paragraph(self, p: Any) -> None:
        content = _docx_inline_text(p).strip()
        if not content:
            return
        level = 0
        try:
            para = self.paragraph(p, self.document)
            style = (para.style.name if para.style is not None else "") or ""
        except Exception:  # a style part that cannot be read: keep the text
            style = ""
        if style == "Title":
            level = 1
        elif style.startswith("Heading"):
            digits = style.removeprefix("Heading").strip()
            level = int(digits) if digits.isdigit() else 1
        if level and "\n" not in content:
            self.blocks.append((f"{'#' * min(level, 6)} {content}", min(level, 6)))
        else:
            self.blocks.append((content, 0))

    def _children(self, parent: Any, tag: str) -> Iterator[Any]:
        """The ``tag`` children of ``parent`` (rows of a table, cells of a row), also those
        wrapped in content controls or custom XML."""
        for child in parent:
            if child.tag == tag:
                yield child
            elif child.tag in (f"{_W}sdt", f"{_W}sdtContent", f"{_W}customXml"):
                yield from self._children(child, tag)

    def _table(self, table: Any) -> None:
        above: dict[int, str] = {}  # grid column -> text of the cell a vertical merge repeats
        for row in self._children(table, f"{_W}tr"):
            cells: list[str] = []
            column = 0
            for tc in self._children(row, f"{_W}tc"):
                props = tc.find(f"{_W}tcPr")
                span, merge = 1, None
                if props is not None:
                    grid = props.find(f"{_W}gridSpan")
                    if grid is not None:
                        span = max(1, int(grid.get(f"{_W}val", "1") or 1))
                    vmerge = props.find(f"{_W}vMerge")
                    if vmerge is not None:
                        merge = vmerge.get(f"{_W}val", "continue")
                if merge == "continue":
                    text = above.get(column, "")
                else:
                    inner = _DocxText(self.document)
                    inner.story(tc)
                    text = " ".join(" ".join(b.split()) for b, _ in inner.blocks)
                    above[column] = text
                if text:
                    cells.append(text)
                column += span
            line = " | ".join(cells)
            if line:
                self.blocks.append((line, 0))


def _load_docx(path: Path, rel: str, problems: list[Skipped]) -> Document:
    """Everything a reader sees in Word, in reading order: headers (each distinct one
    once), the body (paragraphs, headings, tables, content controls, tracked insertions,
    hyperlinks), footnotes, endnotes, footers (each distinct one once). A header, footer
    or notes part that cannot be read is reported in ``problems``; the rest is kept."""
    import docx
    from docx.opc.constants import RELATIONSHIP_TYPE as RT
    from docx.opc.exceptions import PackageNotFoundError
    from docx.oxml.parser import parse_xml

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise SkipFile(f"broken DOCX: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise SkipFile(f"broken DOCX: {type(exc).__name__}: {exc}") from None

    part = document.part

    def part_blocks(rid: str | None, reltype: str | None, select: str) -> list[list[str]]:
        """Blocks of the related part(s) (by id or type), one list per story."""
        rels = [r for r in part.rels.values() if not r.is_external]
        if rid is not None:
            rels = [r for r in rels if r.rId == rid]
        elif reltype is not None:
            rels = [r for r in rels if r.reltype == reltype]
        stories: list[list[str]] = []
        for r in rels:
            target = r.target_part
            try:
                element = getattr(target, "element", None)
                if element is None:
                    element = parse_xml(target.blob)
                roots = element.findall(select) if select else [element]
                for root in roots:
                    if root.get(f"{_W}type") in {"separator", "continuationSeparator"}:
                        continue
                    text = _DocxText(document)
                    text.story(root)
                    stories.append([b for b, _ in text.blocks])
            except Exception as exc:
                reason = f"part {target.partname} not read ({type(exc).__name__}: {exc})"
                log.warning("%s: %s", rel, reason)
                problems.append(Skipped(rel, reason))
        return stories

    def section_parts(kind: str) -> list[str]:
        """Headers or footers of every section, each distinct text once."""
        seen: set[str] = set()
        out: list[str] = []
        for sect in document.element.body.iter(f"{_W}sectPr"):
            for ref in sect.findall(f"{_W}{kind}Reference"):
                for story in part_blocks(ref.get(_R_ID), None, ""):
                    key = "\n".join(story)
                    if key and key not in seen:
                        seen.add(key)
                        out.extend(story)
        return out

    body = _DocxText(document)
    body.story(document.element.body)
    blocks: list[tuple[str, int]] = [(b, 0) for b in section_parts("header")]
    blocks += body.blocks
    for reltype, select in ((RT.FOOTNOTES, f"{_W}footnote"), (RT.ENDNOTES, f"{_W}endnote")):
        for story in part_blocks(None, reltype, select):
            blocks += [(b, 0) for b in story]
    blocks += [(b, 0) for b in section_parts("footer")]

    parts: list[str] = []
    spans: list[Block] = []
    offset = 0
    for raw, level in blocks:
        content = normalize_line_ends(raw)
        if parts:
            parts.append("\n\n")
            offset += 2
        spans.append((offset, offset + len(content), level))
        parts.append(content)
        offset += len(content)
    text = "".join(parts)
    if not text.strip():
        raise SkipFile("DOCX has no text")
    first_heading = next((b.lstrip("#").strip() for b, level in body.blocks if level), "")
    title = (document.core_properties.title or "").strip() or first_heading
    return Document(
        doc_id=rel,
        path=rel,
        title=title or _title_from_name(rel),
        text=text + "\n",
        blocks=tuple(spans),
    )


def _load_beir_jsonl(path: Path, rel: str, problems: list[Skipped]) -> Iterator[Document]:
    """BEIR corpus lines: {"_id", "title", "text"}. A row that cannot be read is skipped
    and appended to ``problems`` with its line number and the reason."""
    text = decode_text(path.read_bytes())
    good = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError(f"a JSON {type(row).__name__}, not an object")
            doc_id = str(row["_id"])
            body = normalize_line_ends(str(row.get("text") or ""))
            title = normalize_line_ends(str(row.get("title") or ""))
            content = f"{title}\n\n{body}" if title and body else (body or title)
            if not content.strip():
                raise ValueError("empty title and text")
            doc = Document(doc_id=f"{rel}#{doc_id}", path=rel, title=title or doc_id, text=content)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            reason = f"line {lineno}: not a BEIR document ({what})"
            log.warning("skipped %s %s", rel, reason)
            problems.append(Skipped(rel, reason))
            continue
        good += 1
        yield doc
    if not good:
        raise SkipFile("no BEIR documents ({'_id', 'title', 'text'} per line) in the file")
