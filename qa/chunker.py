"""Chunk: split a Document into token-bounded, overlapping spans along its structure.

Structure comes first: headings open sections, blank lines (or a line that ends a sentence)
end paragraphs, and paragraphs split into sentences. Sentences are packed into chunks of at
most ``max_tokens`` word pieces of the embedding model; a sentence is cut only when it alone
is over the limit. A heading stays with the text under it. Every chunk records its exact
offsets, lines, page and heading path, so ``document.text[start:end] == chunk.text``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qa.documents import Chunk, Document, LineIndex

TokenCounter = Callable[[Sequence[str]], list[int]]

_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+\S")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s+)""")
_NEXT_STARTS_SENTENCE = re.compile(r"""\s+["'“‘(\[]?[\w¿¡]""")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "eg", "ie",
    "no", "fig", "figs", "vol", "pp", "p", "cf", "al", "approx", "inc", "ltd", "co", "corp",
    "u.s", "u.k", "u.n", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "gen", "gov", "sen", "rep", "col", "lt", "sgt", "capt", "mt",
}  # fmt: skip
_HEADING_MAX_CHARS = 100
_HEADING_MAX_WORDS = 14


@dataclass(frozen=True)
class Unit:
    """A sentence (or a piece of an over-long one) or a heading line; packing's atom."""

    start: int
    end: int
    tokens: int
    paragraph: int
    is_heading: bool = False


@dataclass(frozen=True)
class Block:
    start: int
    end: int
    heading_level: int = 0  # 0 for a paragraph


@dataclass(frozen=True)
class ChunkedDocument:
    chunks: list[Chunk]
    # sentence spans (absolute offsets) of each chunk, headings excluded
    sentences: list[list[tuple[int, int]]]


def split_blocks(text: str) -> list[Block]:
    """Headings and paragraphs of ``text`` as spans without surrounding whitespace."""
    lines: list[tuple[int, int]] = []
    pos = 0
    for line in text.split("\n"):
        lines.append((pos, pos + len(line)))
        pos += len(line) + 1
    has_md_headings = any(_MD_HEADING.match(text[s:e]) for s, e in lines)

    blocks: list[Block] = []
    para_start: int | None = None
    para_end = 0

    def close() -> None:
        nonlocal para_start
        if para_start is not None:
            blocks.append(Block(para_start, para_end))
            para_start = None

    for i, (s, e) in enumerate(lines):
        line = text[s:e]
        stripped = line.strip()
        if not stripped:
            close()
            continue
        ls = s + (len(line) - len(line.lstrip()))
        le = s + len(line.rstrip())
        md = _MD_HEADING.match(line)
        if md:
            close()
            blocks.append(Block(ls, le, heading_level=len(md.group(1))))
            continue
        if not has_md_headings and _looks_like_heading(text, lines, i, para_start is None):
            close()
            blocks.append(Block(ls, le, heading_level=1 if not blocks else 2))
            continue
        starts_new = _LIST_ITEM.match(line) is not None
        if para_start is not None and (starts_new or _ends_sentence(text[para_start:para_end])):
            close()
        if para_start is None:
            para_start = ls
        para_end = le
    close()
    return blocks


def _ends_sentence(text: str) -> bool:
    return text.rstrip().endswith((".", "!", "?", ":", '"', "”", "…", ")", "’"))


def _looks_like_heading(
    text: str, lines: list[tuple[int, int]], i: int, at_paragraph_start: bool
) -> bool:
    """A short standalone line without closing punctuation, followed by body text."""
    s, e = lines[i]
    line = text[s:e].strip()
    prev_line = text[lines[i - 1][0] : lines[i - 1][1]].strip() if i > 0 else ""
    if not (at_paragraph_start or not prev_line or _ends_sentence(prev_line)):
        return False
    if len(line) > _HEADING_MAX_CHARS or len(line.split()) > _HEADING_MAX_WORDS:
        return False
    if line.endswith((".", ",", ";", ":")) or _LIST_ITEM.match(line):
        return False
    if not (line[0].isupper() or line[0].isdigit()):
        return False
    # the next non-blank line must be body text, longer than this line
    for s2, e2 in lines[i + 1 :]:
        nxt = text[s2:e2].strip()
        if nxt:
            return len(nxt) > len(line) or _ends_sentence(nxt)
    return False


def split_sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans of ``text[start:end]``, trimmed of surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    cur = start
    for m in _SENTENCE_END.finditer(text, start, end):
        stop = m.end()
        if not _NEXT_STARTS_SENTENCE.match(text, stop, end):
            continue
        word = re.search(r"([\w.]+)[.!?…]*$", text[cur : m.start() + 1])
        if m.group(0).startswith(".") and word:
            token = word.group(1).rstrip(".").lower()
            if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
                continue
        _append_trimmed(text, cur, stop, spans)
        cur = stop
    _append_trimmed(text, cur, end, spans)
    return spans


def _append_trimmed(text: str, s: int, e: int, out: list[tuple[int, int]]) -> None:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    if e > s:
        out.append((s, e))


def _split_long(
    text: str, s: int, e: int, tokens: int, max_tokens: int, count: TokenCounter
) -> list[tuple[int, int, int]]:
    """Cut an over-long sentence at word boundaries into pieces of at most max_tokens."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text[s:e])]
    counts = count([text[s + a : s + b] for a, b in words])
    pieces: list[tuple[int, int, int]] = []
    piece_start: int | None = None
    piece_end = 0
    used = 0
    for (a, b), n in zip(words, counts, strict=True):
        if piece_start is not None and used + n > max_tokens:
            pieces.append((s + piece_start, s + piece_end, used))
            piece_start, used = None, 0
        if piece_start is None:
            piece_start = a
        piece_end = b
        used += n
        if used > max_tokens:  # a single "word" over the limit: cut it by characters
            pieces.append((s + piece_start, s + piece_end, used))
            piece_start, used = None, 0
    if piece_start is not None:
        pieces.append((s + piece_start, s + piece_end, used))
    return pieces


class Chunker:
    """Packs sentence units into chunks of at most ``max_tokens`` with ``overlap_tokens``."""

    def __init__(self, count_tokens: TokenCounter, max_tokens: int, overlap_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if not 0 <= overlap_tokens < max_tokens:
            raise ValueError(
                f"overlap_tokens must be in [0, max_tokens), got {overlap_tokens} "
                f"with max_tokens={max_tokens}"
            )
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    def units(self, doc: Document) -> list[tuple[Unit, str]]:
        """Units of ``doc`` in order, each with the heading path it falls under."""
        text = doc.text
        spans: list[tuple[int, int, int, bool, str]] = []  # start, end, paragraph, heading?, path
        stack: list[tuple[int, str]] = []
        for p, block in enumerate(split_blocks(text)):
            if block.heading_level:
                title = re.sub(r"^#+\s*", "", text[block.start : block.end]).strip()
                while stack and stack[-1][0] >= block.heading_level:
                    stack.pop()
                stack.append((block.heading_level, title))
                path = " > ".join(t for _, t in stack)
                spans.append((block.start, block.end, p, True, path))
                continue
            path = " > ".join(t for _, t in stack)
            for s, e in split_sentences(text, block.start, block.end):
                spans.append((s, e, p, False, path))
        counts = self.count_tokens([text[s:e] for s, e, *_ in spans]) if spans else []
        out: list[tuple[Unit, str]] = []
        for (s, e, p, heading, path), n in zip(spans, counts, strict=True):
            if n > self.max_tokens:
                # an over-long "heading" is body text cut at words
                for ps, pe, pn in _split_long(text, s, e, n, self.max_tokens, self.count_tokens):
                    out.append((Unit(ps, pe, pn, p, False), path))
            else:
                out.append((Unit(s, e, n, p, heading), path))
        return out

    def chunk(self, doc: Document) -> ChunkedDocument:
        units = self.units(doc)
        lines = LineIndex(doc.text)
        groups: list[list[tuple[Unit, str]]] = []
        cur: list[tuple[Unit, str]] = []
        used = 0

        def emit() -> None:
            if cur:
                groups.append(list(cur))

        for unit, path in units:
            new_page = bool(cur) and doc.page_at(unit.start) != doc.page_at(cur[0][0].start)
            new_section = new_page or (unit.is_heading and cur and not cur[-1][0].is_heading)
            new_paragraph = bool(cur) and unit.paragraph != cur[-1][0].paragraph
            over = used + unit.tokens > self.max_tokens
            if new_section or over:
                emit()
                # overlap only inside a paragraph: a clean paragraph break needs none
                tail = [] if (new_section or new_paragraph) else self._overlap_tail(cur, unit)
                cur, used = tail, sum(u.tokens for u, _ in tail)
            cur.append((unit, path))
            used += unit.tokens
        emit()

        chunks: list[Chunk] = []
        sentences: list[list[tuple[int, int]]] = []
        for group in groups:
            start, end = group[0][0].start, group[-1][0].end
            body = [(u, p) for u, p in group if not u.is_heading] or group
            line_start, line_end = lines.span_lines(start, end)
            chunks.append(
                Chunk(
                    doc_id=doc.doc_id,
                    start=start,
                    end=end,
                    text=doc.text[start:end],
                    line_start=line_start,
                    line_end=line_end,
                    page=doc.page_at(start),
                    heading=body[0][1],
                )
            )
            sentences.append([(u.start, u.end) for u, _ in body])
        return ChunkedDocument(chunks, sentences)

    def _overlap_tail(self, cur: list[tuple[Unit, str]], nxt: Unit) -> list[tuple[Unit, str]]:
        tail: list[tuple[Unit, str]] = []
        budget = min(self.overlap_tokens, self.max_tokens - nxt.tokens)
        used = 0
        for unit, path in reversed(cur[1:]):  # never repeat the whole previous chunk
            if unit.is_heading or used + unit.tokens > budget:
                break
            tail.insert(0, (unit, path))
            used += unit.tokens
        return tail
