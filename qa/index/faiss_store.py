"""The chunk vectors of one segment: one float16 copy on disk, searched by FAISS and read
by numpy from the same pages.

Used by qa.index.segment and qa.index.local only: search reads vectors through the
Snapshot interface. Files of a segment:

- ``vectors.faiss``: a FAISS ``IndexScalarQuantizer`` (``QT_fp16``, inner product) of the
  chunk vectors, FAISS ids = segment rows: exact search. Its codes are the float16 vectors
  themselves and are the last ``n * dim * 2`` bytes of the file, so the same file is also
  read as an ``np.memmap`` (n, dim) float16 (rescoring, reuse on update, compaction): one
  copy on disk and in the page cache, not a ``.npy`` beside a FAISS file of the same bytes.
- ``ann.faiss``, only for a segment of at least ``QA_ANN_MIN_CHUNKS`` chunks: the
  approximate index of qa.ann (IVF over 4-bit PQ fast-scan codes, ``nprobe`` and the
  shortlist calibrated at write), whose shortlist is re-ranked on ``vectors.faiss``
  (segments of index format 6 and 7 hold IVF over 8-bit codes, searched as they are).

Both are read with ``IO_FLAG_MMAP_IFC`` (qa.ann.load_mmap): loading costs milliseconds and
the float16 vectors are the page cache's pages, shared by every process serving the
segment (FAISS copies the fast-scan lists of ``ann.faiss``, 96 bytes a chunk at 384
dimensions, into each process). A filter is
a bitmap over the rows (qa.ann.search_rows); few allowed rows (at most the segment's
``QA_ANN_MIN_CHUNKS`` when it was written) are searched on the exact index, where the
bitmap costs one bit test a row and only the allowed rows are scored, instead of the
approximate one, which would visit many lists to find them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from qa import ann


def mapped(array: np.memmap) -> np.ndarray:
    """A plain ndarray view of a memory-mapped array: the same pages (its ``base`` is the
    ``np.memmap``, which keeps the mapping open), without ``np.memmap``'s Python-level
    ``__getitem__`` and ``__array_finalize__`` on every slice (2.5 ms a search at 100k)."""
    return array.view(np.ndarray)


def load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file memory-mapped read-only (``mapped`` view of an ``np.memmap``; no
    pickle)."""
    return mapped(np.load(path, allow_pickle=False, mmap_mode="r"))


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first (ties in position order)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _exact_index(dim: int) -> faiss.Index:
    return faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )


class FaissStore:
    """Inner-product search (cosine on unit vectors) over the rows of one segment.

    ``vectors``: (n, dim) float16, row i is segment row i (the exact index's codes);
    ``exact``: that index; ``approximate``: the qa.ann index (None below the threshold);
    ``exact_max``: a filter allowing at most this many rows is searched exactly."""

    EXACT_FILE = "vectors.faiss"
    ANN_FILE = "ann.faiss"

    def __init__(
        self,
        vectors: np.ndarray,
        exact: faiss.Index | None,
        approximate: faiss.Index | None,
        exact_max: int,
    ) -> None:
        self.vectors = vectors
        self.exact = exact
        self.approximate = approximate
        self.exact_max = exact_max
        for index in (exact, approximate):
            if index is not None and index.ntotal != len(vectors):
                raise ValueError(f"{index.ntotal} indexed vectors for {len(vectors)} rows")

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def write(cls, path: Path, vectors: np.ndarray, config: ann.AnnConfig) -> dict[str, Any]:
        """Write ``vectors`` (n, dim) as the exact float16 index and, from
        ``config.min_chunks`` rows up, the approximate one (built on the float16 values, so
        that both indexes and rescoring agree). Returns what the segment manifest records:
        {"kind", "nprobe", "shortlist", "min_chunks", "codes_offset"}. Raises RuntimeError
        when FAISS did not write the codes as the file's last bytes."""
        n, dim = vectors.shape
        half = np.ascontiguousarray(vectors, dtype=np.float16)
        exact = _exact_index(dim)
        info: dict[str, Any] = {
            "kind": ann.EXACT,
            "nprobe": None,
            "shortlist": None,
            "min_chunks": config.min_chunks,
            "codes_offset": None,
        }
        if n == 0:
            return info
        exact.add(half.astype(np.float32))  # fp16 of fp16-rounded values: the same bytes
        size = ann.save(exact, path / cls.EXACT_FILE)
        offset = size - half.nbytes
        stored = np.memmap(path / cls.EXACT_FILE, np.float16, "r", offset=offset, shape=(n, dim))
        if not np.array_equal(stored.view(np.uint16), half.view(np.uint16)):
            raise RuntimeError("FAISS did not write the float16 codes as the file's tail")
        info["codes_offset"] = offset
        if ann.kind_for(n, config) != ann.EXACT:
            index = ann.build(half.astype(np.float32), None, config, exact=exact)
            ann.save(index, path / cls.ANN_FILE)
            info["kind"], info["nprobe"] = ann.kind_of(index), ann.nprobe_of(index)
            info["shortlist"] = ann.shortlist_of(index)
        return info

    @classmethod
    def load(cls, path: Path, dimension: int, rows: int, info: dict[str, Any]) -> FaissStore:
        """Map the segment's indexes and its vectors (``rows`` of them). Raises ValueError
        or RuntimeError (FAISS) when they do not fit together."""
        if rows == 0:
            empty = np.zeros((0, dimension), dtype=np.float16)
            return cls(empty, None, None, 0)
        exact = ann.load_mmap(path / cls.EXACT_FILE)
        if exact.d != dimension:
            raise ValueError(f"vectors of dimension {exact.d}, expected {dimension}")
        vectors = mapped(
            np.memmap(
                path / cls.EXACT_FILE,
                np.float16,
                "r",
                offset=int(info["codes_offset"]),
                shape=(rows, dimension),
            )
        )
        approximate = None
        if info["kind"] != ann.EXACT:
            shortlist = info.get("shortlist") or ann.SHORTLISTS[0]  # None before format 8
            approximate = ann.load_mmap(path / cls.ANN_FILE, exact, int(shortlist))
        return cls(vectors, exact, approximate, int(info["min_chunks"]))

    def search(
        self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, inner products float32) of the ``k`` nearest rows, best first; only
        among the rows where the boolean mask ``allowed`` (n,) is true when given."""
        if self.exact is None or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        index = self.approximate if self.approximate is not None else self.exact
        if allowed is not None and int(np.count_nonzero(allowed)) <= self.exact_max:
            index = self.exact  # few allowed rows: scored exactly, the others skipped
        return ann.search_rows(index, vector, k, allowed)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors (len(rows), dim) float32 of some rows."""
        out: np.ndarray = np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)], np.float32)
        return out.reshape(len(rows), self.dimension)
