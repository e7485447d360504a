"""The loaded snapshot: the questions search asks of one index generation.

Search (qa.search) and the engine talk to a ``Snapshot`` only; they never see arrays,
files or a database. A store backend implements it: ``qa.index.local.LocalSnapshot`` over a
local generation folder (FAISS + bm25s), and the Milvus store over a Milvus collection.
Chunks are named by their stable int64 id (qa.index.ids) everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from qa.documents import Chunk, Document
from qa.normalize import nfc


@dataclass(frozen=True)
class Filters:
    """Restrict a search to some documents: by id and/or by path prefix (both NFC)."""

    doc_ids: frozenset[str] | None = None
    path_prefix: str | None = None

    @property
    def active(self) -> bool:
        return self.doc_ids is not None or bool(self.path_prefix)

    def allows(self, doc_id: str, path: str) -> bool:
        """Ids and the path prefix compare in NFC (filters_from gives NFC values)."""
        if self.doc_ids is not None and nfc(doc_id) not in self.doc_ids:
            return False
        return not (self.path_prefix and not nfc(path).startswith(self.path_prefix))


class Scored(NamedTuple):
    """Chunks and a score each, best first: ``ids`` int64 (m,), ``scores`` float32 (m,)."""

    ids: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> Scored:
        return Scored(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


class SentenceSet(NamedTuple):
    """The sentences of some chunks: ``owner`` (s,) int64 is the position of the owning
    chunk in the ids asked for, ``spans`` (s, 2) int64 document offsets, ``vectors`` (s, dim)
    float32 unit vectors. Sentences of one chunk are adjacent, in text order."""

    owner: np.ndarray
    spans: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: str
    title: str
    path: str
    sha256: str
    chunks: int


class Snapshot(Protocol):
    """One index generation, read-only; safe to use from several threads."""

    @property
    def generation(self) -> int: ...

    @property
    def built_at(self) -> str: ...

    @property
    def key(self) -> str:
        """What names this generation in its store (a reader compares it to the pointer)."""
        ...

    @property
    def word_pieces_per_word(self) -> float:
        """Model word pieces per corpus word (qa.builder.word_pieces_per_word)."""
        ...

    @property
    def manifest(self) -> dict[str, Any]: ...

    def __len__(self) -> int:
        """Number of chunks."""
        ...

    def count(self, filters: Filters | None) -> int:
        """Number of chunks the filters allow."""
        ...

    def dense(self, vector: np.ndarray, k: int, filters: Filters | None) -> Scored:
        """The ``k`` chunks nearest to the unit vector ``vector`` (dim,) by cosine."""
        ...

    def lexical(self, query: str, k: int, filters: Filters | None) -> Scored:
        """The ``k`` best chunks by BM25 (only those with a score above 0)."""
        ...

    def lexical_scores(self, query: str, ids: np.ndarray) -> np.ndarray:
        """BM25 score (float32) of each chunk in ``ids`` (0 where no term matches)."""
        ...

    def exact(self, query: str, filters: Filters | None) -> Scored:
        """Chunks holding the query's identifiers verbatim, scored by their rarity in (0, 1]
        (qa.lexical.IdentifierIndex)."""
        ...

    def chunks(self, ids: np.ndarray) -> list[Chunk]:
        """The chunk (text and provenance) of each id, in order. Raises KeyError for an
        unknown id."""
        ...

    def chunk_places(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each chunk lies, without making ``Chunk`` objects: (documents int64 (m,),
        spans int64 (m, 2)). ``documents`` labels each chunk's document (equal labels iff
        the same ``doc_id``; the values mean nothing else), ``spans`` are the chunks'
        (start, end) in its text. Raises KeyError for an unknown id."""
        ...

    def chunk_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Unit vectors (len(ids), dim) float32 of the chunks."""
        ...

    def sentences(self, ids: np.ndarray) -> SentenceSet:
        """The highlightable sentences of the chunks."""
        ...

    def document(self, doc_id: str) -> Document | None:
        """The document with this id (or its NFC form), None if there is none."""
        ...

    def document_info(self, doc_id: str) -> DocumentInfo | None:
        """Title, path, hash and chunk count of a document, without its text."""
        ...

    def documents(self) -> list[DocumentInfo]: ...

    def known_vectors(self) -> dict[str, np.ndarray]:
        """Vectors already embedded, by SHA-256 of the text embedded (chunks and
        sentences), so that a build embeds only new text."""
        ...
