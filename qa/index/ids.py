"""Stable ids: a chunk keeps its id across generations while its document and span do.

An id is the first 8 bytes of SHA-256 over the document id, the document's content hash and
the span, as a non-negative int64 (the id type of FAISS and of a Milvus INT64 primary key).
The same document at the same span gets the same id in every generation and every store, so
an unchanged chunk is never re-inserted, and a changed or removed one can be deleted by id.
A collision needs two of 2^63 values to meet: at a million chunks its chance is about 1e-7.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MASK = (1 << 63) - 1


def chunk_id(doc_id: str, doc_sha256: str, start: int, end: int) -> int:
    """The stable id of the chunk ``[start, end)`` of a document (int in [0, 2^63))."""
    key = f"{doc_id}\x00{doc_sha256}\x00{start}\x00{end}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & _MASK


def chunk_ids(doc_id: str, doc_sha256: str, spans: list[tuple[int, int]]) -> np.ndarray:
    """``chunk_id`` of each span, shape (len(spans),) int64."""
    return np.fromiter(
        (chunk_id(doc_id, doc_sha256, s, e) for s, e in spans), dtype=np.int64, count=len(spans)
    )
