"""The index: how generations are published, stored on disk, and loaded for search.

- ``qa.index.publish``: the protocol (generations, the ``CURRENT`` pointer, the lock,
  verify-then-switch, prune, rollback) of a local index folder;
- ``qa.index.files``: a local generation's manifest (the segments and documents it holds);
- ``qa.index.segment``: immutable segments of chunks, vectors and term counts;
- ``qa.index.terms``: BM25 scored over segments;
- ``qa.index.snapshot``: the ``Snapshot`` interface search reads (candidates by stable
  chunk id, vectors, sentences, documents) and ``Filters``;
- ``qa.index.local``: the local store (FAISS + bm25s) implementing it;
- ``qa.index.ids``: stable chunk ids;  ``qa.index.spec``: what an index was built with.
"""

from __future__ import annotations

from pathlib import Path

from qa.index.files import GenerationPayload, read_manifest, verify_generation
from qa.index.local import LocalIndexStore, LocalSnapshot, load_current, load_generation
from qa.index.publish import (
    checkpoint,
    current_generation_dir,
    index_lock,
    list_generations,
)
from qa.index.snapshot import Filters, Scored, SentenceSet, Snapshot
from qa.index.spec import FORMAT_VERSION, IndexSpec, check_spec


def rollback(index_dir: Path, spec: IndexSpec | None = None) -> Path:
    """Put the local generation before the one in service back in service (verified
    first); returns its folder. Raises IndexNotReady when there is none."""
    LocalIndexStore(index_dir).rollback(spec)
    gen_dir = current_generation_dir(index_dir)
    assert gen_dir is not None
    return gen_dir


__all__ = [
    "FORMAT_VERSION",
    "GenerationPayload",
    "Filters",
    "IndexSpec",
    "LocalIndexStore",
    "LocalSnapshot",
    "Scored",
    "SentenceSet",
    "Snapshot",
    "check_spec",
    "checkpoint",
    "current_generation_dir",
    "index_lock",
    "list_generations",
    "load_current",
    "load_generation",
    "read_manifest",
    "rollback",
    "verify_generation",
]
