"""FAISS vectors of one local generation, by stable int64 chunk id.

Used by qa.index.local only: search reads vectors through the Snapshot interface.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np


class FaissStore:
    """Exact inner-product search (cosine on normalised vectors) with stable int64 ids."""

    FILE_NAME = "vectors.faiss"

    def __init__(self, dimension: int, index: faiss.Index | None = None) -> None:
        self._index = (
            index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        )
        if self._index.d != dimension:
            raise ValueError(f"FAISS index has dimension {self._index.d}, expected {dimension}")

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(f"vectors must have shape (n, {self.dimension}), got {vectors.shape}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids):
            self._index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        selector = faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))
        return int(self._index.remove_ids(selector))

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, inner products) of the ``k`` nearest vectors, best first; only among the
        ids in ``allowed`` (int64) when given (a FAISS IDSelectorBatch on the chunk ids)."""
        if len(self) == 0 or k <= 0 or (allowed is not None and len(allowed) == 0):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        # One question at a time: OpenMP threads only add wake-up and barrier costs (6 ms a
        # search of a 5-vector index on a busy 2-core machine, 0.05 ms on one thread). The
        # setting is per calling thread, so it is made here, in the request's thread.
        faiss.omp_set_num_threads(1)
        if allowed is None:
            scores, ids = self._index.search(q, min(k, len(self)))
        else:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params = faiss.SearchParameters()
            params.sel = selector
            scores, ids = self._index.search(q, min(k, len(allowed)), params=params)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.vstack([self._index.reconstruct(int(i)) for i in ids])

    def save(self, path: Path) -> None:
        faiss.write_index(self._index, str(path / self.FILE_NAME))

    @classmethod
    def load(cls, path: Path, dimension: int) -> FaissStore:
        index = faiss.read_index(str(path / cls.FILE_NAME))
        return cls(dimension, index)
