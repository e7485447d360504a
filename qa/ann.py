"""Nearest-neighbour index for chunk vectors: exact below a size, approximate above it.

The FAISS index type follows the number of vectors (measured in docs/performance.md,
``python -m bench.scale``):

- below ``QA_ANN_MIN_CHUNKS`` vectors: exact search over float16 vectors
  (``IndexIDMap2(IndexScalarQuantizer(QT_fp16))``): the same ranking as float32 up to
  rounding (scores differ by < 1e-3), half the bytes, and 1.2-2.7x faster than
  ``IndexFlatIP`` for one question at a time on this machine;
- from ``QA_ANN_MIN_CHUNKS`` up: an inverted file over 8-bit scalar-quantized vectors
  (``IndexIVFScalarQuantizer``, ``QT_8bit``, about ``sqrt(n)`` lists, 1 byte a dimension).
  How many lists a search visits (``nprobe``) is calibrated at build time on the vectors
  themselves so that recall@10 against exact search is at least ``QA_ANN_TARGET_RECALL``,
  and is saved in the file.

HNSW was measured too: at 100k vectors it searched as fast at the same recall, but built
7-13x slower (84-159 s against 12 s on 2 cores), which at 1M is most of a build.

Both types keep the caller's int64 ids (any values: content hashes need not be
contiguous), search by inner product (cosine on normalised vectors), accept a filter as a
set of allowed ids (a FAISS ``IDSelectorBatch`` passed in ``SearchParameters``), and are
read back memory-mapped (``IO_FLAG_MMAP_IFC``): the codes stay in the page cache, shared
by every process that serves the same file, and loading costs milliseconds. An index
read this way is read-only: adding to it or removing from it fails a FAISS assertion,
which aborts the process, so an update writes a new file and maps that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

if TYPE_CHECKING:
    from qa.settings import Settings

EXACT = "exact-fp16"
IVF_SQ8 = "ivf-sq8"

_CALIBRATION_QUERIES = 512
_RECALL_K = 10
_TRAIN_POINTS_PER_LIST = 64  # FAISS warns below 39 training points a list
_ADD_BLOCK = 65_536


@dataclass(frozen=True)
class AnnConfig:
    """What decides the index type and its search parameters.

    ``min_chunks``: from this many vectors up the index is approximate (IVF-SQ8), below it
    exact. ``target_recall``: recall@10 against exact search that calibration reaches.
    """

    min_chunks: int = 20_000
    target_recall: float = 0.95

    def __post_init__(self) -> None:
        if self.min_chunks < 0:
            raise ValueError(f"min_chunks must be >= 0, got {self.min_chunks}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")

    @classmethod
    def from_settings(cls, settings: Settings) -> AnnConfig:
        return cls(min_chunks=settings.ann_min_chunks, target_recall=settings.ann_target_recall)


def kind_for(n: int, config: AnnConfig) -> str:
    """The index type for ``n`` vectors: :data:`EXACT` or :data:`IVF_SQ8`."""
    return IVF_SQ8 if n >= max(config.min_chunks, 1) and n >= 2 * _TRAIN_POINTS_PER_LIST else EXACT


def lists_for(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: the power of two nearest ``sqrt(n)``, at most
    ``n / 64`` so that every list has enough training points (1M -> 1024, 100k -> 256).
    Measured at 1M (docs/performance.md): 2048 lists reach the same recall of new queries
    scanning the same share of the codes (4.7 %) as 1024, at 122 s of CPU to build against
    77 s; 4096 lists scan 3.1 % but take 192 s of CPU to train and fill."""
    nlist = 2 ** round(math.log2(max(math.sqrt(n), 1.0)))
    return int(max(1, min(nlist, n // _TRAIN_POINTS_PER_LIST)))


def nprobe_steps(nlist: int) -> list[int]:
    """The ``nprobe`` values calibration tries, in order: powers of two and the halfway
    steps 1.5 times them (1, 2, 3, 4, 6, 8, 12, 16, 24, ...), up to ``nlist``. Powers of
    two alone overshoot by up to 2x (1M vectors: 64 lists probed where 48 reach the
    target)."""
    steps = {nlist}
    p = 1
    while p < nlist:
        steps.update(x for x in (p, p + p // 2) if x < nlist)
        p *= 2
    return sorted(steps)


def make_index(n: int, dim: int, config: AnnConfig | None = None) -> faiss.Index:
    """An empty index of the type for ``n`` vectors of dimension ``dim``.

    The IVF type must be trained (:func:`build` does it) before vectors are added.
    """
    config = config or AnnConfig()
    if dim <= 0:
        raise ValueError(f"dimension must be positive, got {dim}")
    if kind_for(n, config) == EXACT:
        flat = faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        return faiss.IndexIDMap2(flat)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, lists_for(n), faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    return index  # the Python wrapper keeps ``quantizer`` alive with the index


def build(
    vectors: np.ndarray, ids: np.ndarray, config: AnnConfig | None = None, *, seed: int = 0
) -> faiss.Index:
    """The index for ``vectors`` (n, dim), float32, normalised) under int64 ``ids`` (n,),
    unique, any value but -1.

    Trains the IVF type on a sample (64 points a list) and calibrates its ``nprobe``
    (:func:`calibrate`) on up to 512 of the vectors, held out until then. Raises
    ``ValueError`` on mismatched shapes or repeated ids.
    """
    config = config or AnnConfig()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must have shape (n, dim), got {vectors.shape}")
    if ids.shape != (len(vectors),):
        raise ValueError(f"{ids.shape} ids for {len(vectors)} vectors")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if np.any(ids == -1):
        raise ValueError("id -1 is reserved (FAISS marks a missing result with it)")
    n, dim = vectors.shape
    index = make_index(n, dim, config)
    approximate = kind_for(n, config) == IVF_SQ8
    # calibration queries: indexed vectors held out of training and out of the lists
    # until nprobe is chosen, so that they are new to the index, as questions are
    held = np.zeros(0, dtype=np.int64)
    if approximate:
        count = min(_CALIBRATION_QUERIES, n // 4)
        held = np.sort(np.random.default_rng(seed + 1).choice(n, count, replace=False))
    kept = np.ones(n, dtype=bool)
    kept[held] = False
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        ivf = faiss.extract_index_ivf(index)
        pool = np.flatnonzero(kept)
        sample = min(len(pool), _TRAIN_POINTS_PER_LIST * ivf.nlist)
        rows = np.sort(rng.choice(pool, sample, replace=False))
        ivf.cp.seed = seed
        index.train(vectors[rows])
    for start in range(0, n, _ADD_BLOCK):
        block = start + np.flatnonzero(kept[start : start + _ADD_BLOCK])
        if len(block):
            index.add_with_ids(vectors[block], ids[block])
    if approximate:
        queries = vectors[held]
        # exact top 10 among the vectors in the index: enough neighbours that the held-out
        # ones (skipped) leave 10
        k = min(_RECALL_K + len(held), n)
        _, exact_rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        truth = [ids[r[kept[r]][:_RECALL_K]] for r in exact_rows]
        calibrate(index, queries, truth, config.target_recall)
        index.add_with_ids(vectors[held], ids[held])
    return index


def calibrate(
    index: faiss.Index, queries: np.ndarray, truth: list[np.ndarray], target_recall: float
) -> float:
    """Set the IVF index's ``nprobe`` to the smallest of :func:`nprobe_steps` whose
    recall@10 on ``queries`` (q, dim) against ``truth`` (each query's exact top 10 ids
    among those in the index) reaches ``target_recall``, or to every list; return the
    recall reached.

    :func:`build` gives it up to 512 of the vectors, held out of the index (out of training,
    and added only after this): vectors the index has not seen, as a question is. Queries
    that are vectors in the index (each one's own id left out) overstate the recall of new
    ones: at 20,000 clustered vectors 0.95 on those gave 0.946 on new queries.
    """
    ivf = faiss.extract_index_ivf(index)
    xq = np.ascontiguousarray(queries, dtype=np.float32)
    recall = 0.0
    for nprobe in nprobe_steps(int(ivf.nlist)):
        ivf.nprobe = nprobe
        _, found = index.search(xq, _RECALL_K)
        recall = recall_at_lists(truth, found)
        if recall >= target_recall:
            break
    return recall


def recall_at_lists(truth: list[np.ndarray], found: np.ndarray) -> float:
    """:func:`recall_at` with each query's true ids a list of its own length."""
    return _recall(truth, [f[f != -1] for f in found])


def _recall(truth: list[np.ndarray], found: list[np.ndarray]) -> float:
    hits = [len(np.intersect1d(t, f)) / max(len(t), 1) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def recall_at(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean over queries of |found[q] ∩ truth[q]| / |truth[q]| (rows of ids, -1 ignored)."""
    return _recall([t[t != -1] for t in truth], [f[f != -1] for f in found])


def kind_of(index: faiss.Index) -> str:
    """:data:`EXACT` or :data:`IVF_SQ8` for an index made here."""
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return EXACT
    return IVF_SQ8


def nprobe_of(index: faiss.Index) -> int | None:
    """The calibrated ``nprobe`` of an IVF index; ``None`` for the exact type."""
    if kind_of(index) == EXACT:
        return None
    return int(faiss.extract_index_ivf(index).nprobe)


def save(index: faiss.Index, path: Path) -> int:
    """Write ``index`` to the file ``path`` (FAISS format, search parameters included);
    return its size in bytes."""
    faiss.write_index(index, str(path))
    return path.stat().st_size


def load_mmap(path: Path) -> faiss.Index:
    """Read the index at ``path`` memory-mapped (``IO_FLAG_MMAP_IFC``): vector codes, ids
    and inverted lists are pages of the file, shared by every process reading it. The
    result is read-only: never call ``add_with_ids`` or ``remove_ids`` on it (a FAISS
    assertion aborts the process). Raises ``RuntimeError`` when the file is not a FAISS
    index."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)


def search(
    index: faiss.Index, vector: np.ndarray, k: int, ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (m,), scores float32 (m,)) of the ``k`` nearest vectors by inner
    product, best first, m <= k; with ``ids``, only among those ids.

    ``vector``: one query, shape (dim,) or (1, dim). With a filter, the IVF index visits
    ``nprobe / sqrt(fraction)`` lists (at most all of them), where ``fraction`` is the
    share of the index the filter allows, so a narrow filter still fills ``k``: measured
    at 100k vectors (256 lists, nprobe 32), recall@10 among the allowed ids 0.988 / 0.997 /
    1.0 for 10 % / 1 % / 0.1 % allowed, against 0.952 / 0.882 / 0.655 with ``nprobe``
    unchanged and 0.990 at 2.5x the time of this rule with ``nprobe / fraction``. Runs on
    the calling thread only (one OpenMP thread: measured faster for one query on a busy
    machine); the thread's OpenMP setting, which torch shares, is put back afterwards.
    """
    if ids is None:
        return _search(index, vector, k, None, 0)
    allowed = np.unique(np.asarray(ids, dtype=np.int64))
    if len(allowed) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return _search(index, vector, k, faiss.IDSelectorBatch(allowed), len(allowed))


def search_rows(
    index: faiss.Index, vector: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` for an index whose ids are the rows ``0 .. ntotal - 1`` (a segment's
    index, qa.index.segment), with the filter as a boolean mask over the rows (ntotal,):
    a FAISS ``IDSelectorBitmap`` (one bit test per visited vector, where ``IDSelectorBatch``
    hashes every id). Returns (rows int64 (m,), scores float32 (m,)), best first."""
    if allowed is None:
        return _search(index, vector, k, None, 0)
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.shape != (index.ntotal,):
        raise ValueError(f"mask has shape {allowed.shape}, the index {index.ntotal} vectors")
    count = int(allowed.sum())
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    bitmap = np.packbits(allowed, bitorder="little")  # FAISS: bit i & 7 of byte i >> 3
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # bitmap stays alive
    return _search(index, vector, k, selector, count)


def _search(
    index: faiss.Index,
    vector: np.ndarray,
    k: int,
    selector: faiss.IDSelector | None,
    allowed: int,
) -> tuple[np.ndarray, np.ndarray]:
    if k <= 0 or index.ntotal == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
    if q.shape[1] != index.d:
        raise ValueError(f"query has dimension {q.shape[1]}, the index {index.d}")
    k = min(k, int(index.ntotal))
    # one question: FAISS's OpenMP threads cost more than they give. The setting is the
    # calling thread's OpenMP setting, which torch reads too (torch.get_num_threads), so it
    # is put back: a process that searched must still embed and build on every core.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        if selector is None:
            scores, found = index.search(q, k)
        else:
            params: faiss.SearchParameters
            if kind_of(index) == IVF_SQ8:
                ivf = faiss.extract_index_ivf(index)
                fraction = allowed / index.ntotal
                params = faiss.SearchParametersIVF()
                scale = 1 / math.sqrt(min(fraction, 1.0))
                params.nprobe = int(min(ivf.nlist, math.ceil(ivf.nprobe * scale)))
            else:
                params = faiss.SearchParameters()
            params.sel = selector
            scores, found = index.search(q, k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)
    keep = found[0] != -1  # FAISS marks a missing result with id -1
    return found[0][keep], scores[0][keep]


__all__ = [
    "EXACT",
    "IVF_SQ8",
    "AnnConfig",
    "build",
    "calibrate",
    "kind_for",
    "kind_of",
    "lists_for",
    "load_mmap",
    "make_index",
    "nprobe_of",
    "nprobe_steps",
    "recall_at",
    "recall_at_lists",
    "save",
    "search",
    "search_rows",
]
