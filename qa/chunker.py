"""Chunk: split a Document into token-bounded, overlapping spans along its structure.

Structure comes first: the blocks the reader found (``Document.blocks``: Markdown parsed by
markdown-it-py, HTML, DOCX), or else for plain text: headings open sections, blank lines
(or a line that ends a sentence) end paragraphs, and a ``Label:`` line stays with the value
on the next line. Paragraphs split into sentences (``.!?…`` followed by a space, and
``。！？`` and their full-width and other scripts' forms anywhere). Sentences are packed into
chunks of at most ``max_tokens`` word pieces of the embedding model, counting the section
heading the embedder sees in front of a chunk; a sentence over the limit is cut at words,
and a run without spaces over it (CJK, Thai, one-line JSON, base64) between characters.
A heading stays with the text under it. Every chunk records its exact offsets, lines,
page and heading path, so ``document.text[start:end] == chunk.text``.

Segmenter: the hand-written rules stay (rather than PyICU's BreakIterator or pysbd):
PyICU has no wheel on PyPI (it needs ICU headers and a C++ build on every machine), and
pysbd re-finds its sentences in the text to give offsets, which goes wrong on repeats and
whitespace (pySBD issues #49, #83) and takes one language per segmenter.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qa.documents import Chunk, Document, LineIndex

TokenCounter = Callable[[Sequence[str]], list[int]]

_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+\S")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_LINE_END = re.compile(r"\r\n|\r|\n")
# Marks that end a sentence wherever they stand (no space follows in CJK text): ideographic
# and full-width full stop, exclamation and question marks, halfwidth ideographic stop,
# double marks, Arabic question mark and full stop, Devanagari danda, Ethiopic, Myanmar
# and Khmer full stops.
_STOPS = "。！？｡．‼⁇⁈⁉؟۔।॥።။។"
_CLOSERS = "\"'”’)]」』）】〉》〕"
_SENTENCE_END = re.compile(
    rf"""[.!?…]+["'”’)\]]*(?=\s+)|[{_STOPS}]+[{re.escape(_CLOSERS)}]*(?![\d{_STOPS}])"""
)
_NEXT_STARTS_SENTENCE = re.compile(r"""\s+["'“‘(\[]?[\w¿¡]""")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "eg", "ie",
    "no", "fig", "figs", "vol", "pp", "p", "cf", "al", "approx", "inc", "ltd", "co", "corp",
    "u.s", "u.k", "u.n", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "gen", "gov", "sen", "rep", "col", "lt", "sgt", "capt", "mt",
}  # fmt: skip
_PARAGRAPH_ENDS = (".", "!", "?", '"', "”", "…", ")", "’", *_STOPS)
_PIECE_TOKENS = 48  # size of the pieces an over-long sentence is cut into
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


def line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line of ``text``, line ends (LF, CRLF, lone CR) excluded."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _LINE_END.finditer(text):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(text)))
    return spans


def split_blocks(text: str) -> list[Block]:
    """Headings and paragraphs of plain ``text`` as spans without surrounding whitespace."""
    lines = line_spans(text)
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
    """The text ends a sentence; a ``Label:`` line does not (its value follows)."""
    return text.rstrip().endswith(_PARAGRAPH_ENDS)


def _looks_like_heading(
    text: str, lines: list[tuple[int, int]], i: int, at_paragraph_start: bool
) -> bool:
    """A short standalone line without closing punctuation, followed by body text."""
    s, e = lines[i]
    line = text[s:e].strip()
    prev_line = text[lines[i - 1][0] : lines[i - 1][1]].strip() if i > 0 else ""
    if not (at_paragraph_start or not prev_line or _ends_sentence(prev_line)):
        return False
    if prev_line.endswith(":"):  # the value under a label
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
        if m.group(0)[0] in _STOPS:
            _append_trimmed(text, cur, stop, spans)
            cur = stop
            continue
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
    text: str, s: int, e: int, limit: int, count: TokenCounter
) -> list[tuple[int, int, int]]:
    """Cut an over-long sentence ``text[s:e]`` into pieces of sentence size (at most
    ``_PIECE_TOKENS`` and ``limit`` word pieces), as (start, end, tokens): between words
    where it can, and a word over that size (a run without spaces) by :func:`_cut_run`.
    Every piece is counted again as a whole. Pieces of sentence size give the highlight
    and answer a passage of their own (``"retention_days":45`` out of a one-line JSON)."""
    max_tokens = min(limit, _PIECE_TOKENS)
    words = [(s + m.start(), s + m.end()) for m in re.finditer(r"\S+", text[s:e])]
    counts = count([text[a:b] for a, b in words])
    pieces: list[tuple[int, int]] = []
    piece_start: int | None = None
    piece_end = 0
    used = 0
    for (a, b), n in zip(words, counts, strict=True):
        if piece_start is not None and used + n > max_tokens:
            pieces.append((piece_start, piece_end))
            piece_start, used = None, 0
        if n > max_tokens:
            pieces.extend((ps, pe) for ps, pe, _ in _cut_run(text, a, b, max_tokens, count))
            continue
        if piece_start is None:
            piece_start = a
        piece_end = b
        used += n
    if piece_start is not None:
        pieces.append((piece_start, piece_end))
    out: list[tuple[int, int, int]] = []
    for (a, b), n in zip(pieces, count([text[a:b] for a, b in pieces]), strict=True):
        if n <= max_tokens:  # words counted alone can count more together
            out.append((a, b, n))
        else:
            out.extend(_cut_run(text, a, b, max_tokens, count))
    return out


def _joins_next(ch: str) -> bool:
    """A character that belongs to the one before it (combining mark, joiner, variation
    selector): never cut in front of it."""
    return unicodedata.category(ch) in {"Mn", "Mc", "Me"} or ch in "\u200d\ufe0e\ufe0f"


_CLAUSE_ENDS = ",;})]>|，、；：。！？"


def _soft_cut(text: str, s: int, end: int) -> int | None:
    """The last place in the second half of ``text[s:end]`` to cut a run without spaces:
    after a clause mark (``,;})]``, CJK commas), else after any other punctuation (not
    ``_`` or a joiner); None when there is neither."""
    half = s + (end - s) // 2
    for ok in (
        lambda ch: ch in _CLAUSE_ENDS or ch.isspace(),
        lambda ch: not (ch.isalnum() or ch == "_" or _joins_next(ch)),
    ):
        p = end
        while p > half and not ok(text[p - 1]):
            p -= 1
        if p > half:
            return p
    return None


def _cut_run(
    text: str, s: int, e: int, max_tokens: int, count: TokenCounter
) -> list[tuple[int, int, int]]:
    """Cut ``text[s:e]`` into pieces of at most ``max_tokens`` word pieces, each as long as
    the limit allows (binary search on the counter), ending after a space or punctuation
    in its second half when there is one, else between characters (never in front of a
    combining mark). A single character over the limit is a piece of its own."""
    pieces: list[tuple[int, int, int]] = []
    window = 64 * max_tokens  # no word piece is longer than 64 characters in practice
    while s < e:
        while s < e and text[s].isspace():
            s += 1
        if s >= e:
            break
        hi = min(e, s + window)
        n_hi = count([text[s:hi]])[0]
        if n_hi <= max_tokens:
            end, n = hi, n_hi
        else:
            lo, n_lo = s + 1, count([text[s : s + 1]])[0]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                n_mid = count([text[s:mid]])[0]
                if n_mid <= max_tokens:
                    lo, n_lo = mid, n_mid
                else:
                    hi = mid
            end, n = lo, n_lo
            cut = _soft_cut(text, s, lo) or lo
            while cut > s + 1 and _joins_next(text[cut]):
                cut -= 1
            if cut != lo:
                n_cut = count([text[s:cut]])[0]
                if n_cut <= max_tokens:
                    end, n = cut, n_cut
        trimmed = end
        while trimmed > s and text[trimmed - 1].isspace():
            trimmed -= 1
        pieces.append((s, trimmed, n))
        s = end
    return pieces


def _heading_title(line: str) -> str:
    """A heading's text: its first line without ``#`` marks (ATX or setext headings)."""
    first = _LINE_END.split(line.strip(), 1)[0]
    return re.sub(r"\s+#+\s*$", "", re.sub(r"^[\s>]*#*\s*", "", first)).strip()


def _section(path: str) -> str:
    """The innermost heading, which Chunk.embed_text puts in front of the chunk."""
    return path.rsplit(" > ", 1)[-1]


class Chunker:
    """Packs sentence units into chunks of at most ``max_tokens`` with ``overlap_tokens``.

    The limit holds for what the embedder sees: a chunk's text plus the section heading
    ``Chunk.embed_text`` puts in front of it, and every sentence.
    """

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

    def blocks(self, doc: Document) -> list[Block]:
        """The reader's blocks (``doc.blocks``) when it recorded them, else found here."""
        if doc.blocks:
            return [Block(s, e, level) for s, e, level in doc.blocks]
        return split_blocks(doc.text)

    def units(self, doc: Document) -> list[tuple[Unit, str]]:
        """Units of ``doc`` in order, each with the heading path it falls under."""
        return self._units(doc)[0]

    def _units(self, doc: Document) -> tuple[list[tuple[Unit, str]], dict[str, int]]:
        """Units with their heading paths, and the word pieces each section heading adds
        in front of a chunk's text (``Chunk.embed_text``)."""
        text = doc.text
        blocks = self.blocks(doc)
        titles = [_heading_title(text[b.start : b.end]) if b.heading_level else "" for b in blocks]
        heading_tokens = self.count_tokens(
            [text[b.start : b.end] for b in blocks if b.heading_level]
        )
        spans: list[tuple[int, int, int, bool, str]] = []  # start, end, paragraph, heading?, path
        stack: list[tuple[int, str]] = []
        counted = iter(heading_tokens)
        for p, block in enumerate(blocks):
            # a heading the embedder could not see beside half a chunk of text is body text
            if block.heading_level and next(counted) <= self.max_tokens // 2 and titles[p]:
                while stack and stack[-1][0] >= block.heading_level:
                    stack.pop()
                stack.append((block.heading_level, titles[p]))
                path = " > ".join(t for _, t in stack)
                spans.append((block.start, block.end, p, True, path))
                continue
            path = " > ".join(t for _, t in stack)
            for s, e in split_sentences(text, block.start, block.end):
                spans.append((s, e, p, False, path))
        counts = self.count_tokens([text[s:e] for s, e, *_ in spans]) if spans else []
        sections = sorted({_section(path) for *_, path in spans} - {""})
        reserve = dict(zip(sections, self.count_tokens(sections), strict=True))
        out: list[tuple[Unit, str]] = []
        for (s, e, p, heading, path), n in zip(spans, counts, strict=True):
            limit = self._limit(reserve, path)
            if n > limit:
                for ps, pe, pn in _split_long(text, s, e, limit, self.count_tokens):
                    out.append((Unit(ps, pe, pn, p, False), path))
            else:
                out.append((Unit(s, e, n, p, heading), path))
        return out, reserve

    def _limit(self, reserve: dict[str, int], path: str) -> int:
        """Word pieces left for a chunk's text under ``path`` (its heading goes in front)."""
        return max(1, self.max_tokens - reserve.get(_section(path), 0))

    def chunk(self, doc: Document) -> ChunkedDocument:
        units, reserve = self._units(doc)
        lines = LineIndex(doc.text)
        groups: list[list[tuple[Unit, str]]] = []
        cur: list[tuple[Unit, str]] = []
        used = 0
        limit = self.max_tokens

        def emit() -> None:
            if cur:
                groups.append(list(cur))

        for unit, path in units:
            new_page = bool(cur) and doc.page_at(unit.start) != doc.page_at(cur[0][0].start)
            new_section = new_page or (unit.is_heading and cur and not cur[-1][0].is_heading)
            new_paragraph = bool(cur) and unit.paragraph != cur[-1][0].paragraph
            unit_limit = self._limit(reserve, path)
            over = used + unit.tokens > min(limit, unit_limit)
            if new_section or over:
                emit()
                # overlap only inside a paragraph: a clean paragraph break needs none
                tail = (
                    []
                    if (new_section or new_paragraph)
                    else self._overlap_tail(cur, unit, unit_limit)
                )
                cur, used = tail, sum(u.tokens for u, _ in tail)
                limit = min([self._limit(reserve, p) for _, p in tail], default=self.max_tokens)
            cur.append((unit, path))
            used += unit.tokens
            limit = min(limit, unit_limit)
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

    def _overlap_tail(
        self, cur: list[tuple[Unit, str]], nxt: Unit, limit: int
    ) -> list[tuple[Unit, str]]:
        tail: list[tuple[Unit, str]] = []
        budget = min(self.overlap_tokens, limit - nxt.tokens)
        used = 0
        for unit, path in reversed(cur[1:]):  # never repeat the whole previous chunk
            if unit.is_heading or used + unit.tokens > budget:
                break
            tail.insert(0, (unit, path))
            used += unit.tokens
        return tail
