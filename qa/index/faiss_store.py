"""The chunk vectors of one segment: a float16 array and a qa.ann index over it.

Used by qa.index.segment and qa.index.local only: search reads vectors through the
Snapshot interface. Both files are read memory-mapped (the array with ``np.load(...,
mmap_mode="r")``, the index with ``qa.ann.load_mmap``): loading costs milliseconds and
the pages are the page cache's, shared by every process serving the segment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from qa import ann


def load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file memory-mapped read-only (an ``np.memmap``; no pickle)."""
    array: np.ndarray = np.load(path, allow_pickle=False, mmap_mode="r")
    return array


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first (ties in position order)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


class FaissStore:
    """Inner-product search (cosine on unit vectors) over the rows of one segment.

    ``vectors``: (n, dim) float16, row i is segment row i; ``index``: the qa.ann index of
    the same vectors with FAISS ids = rows (None when n == 0); ``exact_max``: a filter
    that allows at most this many rows of an approximate index is searched exactly over
    the allowed rows' vectors instead (the ``QA_ANN_MIN_CHUNKS`` the segment was written
    with: below it exact search is the fast one)."""

    INDEX_FILE = "vectors.faiss"
    VECTORS_FILE = "vectors.npy"

    def __init__(self, vectors: np.ndarray, index: faiss.Index | None, exact_max: int) -> None:
        self.vectors = vectors
        self.index = index
        self.exact_max = exact_max
        self.kind = ann.kind_of(index) if index is not None else ann.EXACT
        if index is not None and index.ntotal != len(vectors):
            raise ValueError(f"{index.ntotal} indexed vectors for {len(vectors)} rows")

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def write(cls, path: Path, vectors: np.ndarray, config: ann.AnnConfig) -> dict[str, Any]:
        """Write ``vectors`` (n, dim) as float16 and the index of the type for n (built on
        the float16 values, so that index and rescoring agree). Returns what the segment
        manifest records: {"kind", "nprobe", "min_chunks"}."""
        half = np.ascontiguousarray(vectors, dtype=np.float16)
        np.save(path / cls.VECTORS_FILE, half, allow_pickle=False)
        info: dict[str, Any] = {"kind": None, "nprobe": None, "min_chunks": config.min_chunks}
        if len(half):
            index = ann.build(half.astype(np.float32), np.arange(len(half)), config)
            ann.save(index, path / cls.INDEX_FILE)
            info["kind"], info["nprobe"] = ann.kind_of(index), ann.nprobe_of(index)
        return info

    @classmethod
    def load(cls, path: Path, dimension: int, info: dict[str, Any]) -> FaissStore:
        """Map the segment's vectors and index. Raises ValueError or RuntimeError (FAISS)
        when they do not fit together."""
        vectors = load_npy(path / cls.VECTORS_FILE)
        if vectors.dtype != np.float16 or vectors.ndim != 2 or vectors.shape[1] != dimension:
            raise ValueError(f"vectors {vectors.dtype} {vectors.shape}, expected (n, {dimension})")
        index = ann.load_mmap(path / cls.INDEX_FILE) if len(vectors) else None
        return cls(vectors, index, int(info.get("min_chunks", 0)))

    def search(
        self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, inner products float32) of the ``k`` nearest rows, best first; only
        among the rows where the boolean mask ``allowed`` (n,) is true when given."""
        if self.index is None or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if allowed is None:
            return ann.search_rows(self.index, vector, k)
        count = int(np.count_nonzero(allowed))
        if count == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self.kind != ann.EXACT and count <= self.exact_max:
            # a narrow filter: the allowed rows' vectors, exactly (an approximate index
            # with a selector visits many lists to find few allowed rows)
            rows = np.flatnonzero(allowed)
            q = np.asarray(vector, dtype=np.float32).reshape(-1)
            scores = self.rows(rows) @ q
            picked = top(scores, k)
            return rows[picked], scores[picked].astype(np.float32)
        return ann.search_rows(self.index, vector, k, allowed)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors (len(rows), dim) float32 of some rows."""
        out: np.ndarray = np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)], np.float32)
        return out.reshape(len(rows), self.dimension)
