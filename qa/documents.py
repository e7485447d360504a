"""The data that flows through the pipeline: documents, chunks and their provenance."""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, field

# A block the reader found: (start, end, heading level), 0 for body text (a paragraph, a
# list item, a table row, a code block). Offsets into Document.text, without surrounding
# whitespace.
Block = tuple[int, int, int]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Document:
    """A loaded document. ``text`` is what every offset points into."""

    doc_id: str
    path: str
    title: str
    text: str
    page_starts: tuple[int, ...] = ()  # PDF: offset in ``text`` where each page begins
    sha256: str = field(default="")
    # Structure from the format's parser (Markdown, HTML, DOCX); empty: the chunker finds
    # paragraphs and headings itself. Not stored in the index (only chunking needs it).
    blocks: tuple[Block, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", sha256_text(self.text))

    def page_at(self, offset: int) -> int | None:
        """1-based page number holding ``offset`` (None for documents without pages)."""
        if not self.page_starts:
            return None
        return bisect.bisect_right(self.page_starts, offset)


@dataclass(frozen=True)
class Chunk:
    """A span of a document, with its provenance fixed where it is made."""

    doc_id: str
    start: int
    end: int
    text: str
    line_start: int
    line_end: int
    page: int | None
    heading: str

    @property
    def embed_text(self) -> str:
        """What the embedding model sees: the nearest heading as context, then the text.

        Only the innermost heading is added: a document title repeated on every chunk makes
        all chunks of a document look alike to the model (measured in docs/quality.md).
        """
        section = self.heading.rsplit(" > ", 1)[-1]
        if section and not self.text.startswith(section):
            return f"{section}\n{self.text}"
        return self.text


@dataclass(frozen=True)
class Sentence:
    """A sentence span inside a document (used for highlights and answers)."""

    start: int
    end: int


_LINE_END = re.compile(r"\r\n|\r|\n")


class LineIndex:
    """Maps character offsets of a text to 1-based line numbers; LF, CRLF and a lone CR
    each end a line."""

    def __init__(self, text: str) -> None:
        self._starts = [0] + [m.end() for m in _LINE_END.finditer(text)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self._starts, offset)

    def span_lines(self, start: int, end: int) -> tuple[int, int]:
        return self.line_of(start), self.line_of(max(start, end - 1))
