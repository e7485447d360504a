"""Nearest-neighbour index for chunk vectors: exact below a size, approximate above it.

The FAISS index type follows the number of vectors (measured in docs/performance.md,
``python -m bench.scale``):

- below ``QA_ANN_MIN_CHUNKS`` vectors: exact search over float16 vectors
  (``IndexIDMap2(IndexScalarQuantizer(QT_fp16))``): the same ranking as float32 up to
  rounding (scores differ by < 1e-3), half the bytes, and 1.2-2.7x faster than
  ``IndexFlatIP`` for one question at a time on this machine;
- from ``QA_ANN_MIN_CHUNKS`` up: an inverted file (about ``sqrt(n)`` lists) of 4-bit
  product-quantization codes scanned with SIMD lookup tables (``IndexIVFPQFastScan``,
  ``PQ{dim/2}x4fs``: one byte for every 4 dimensions, André et al., "Quicker ADC",
  IEEE TPAMI 2019, as FAISS implements it), whose shortlist of candidates (calibrated,
  256 or more, and at least ``10k``) is re-ranked on the float16 vectors
  (``IndexRefine`` over the exact index of the same rows). How many lists a search
  visits (``nprobe``, saved in the file) and the shortlist (recorded by the caller) are
  calibrated at build time on the vectors themselves so that recall@10 against exact
  search is at least ``QA_ANN_TARGET_RECALL``.

Measured at 1M vectors of 384 dimensions (docs/performance.md, ``python -m bench.scale``):
the fast-scan codes re-ranked searched in 1.0-1.3 ms at recall@10 0.97 (nprobe 48 of
1024 lists), where 8-bit scalar codes (``IVF_SQ8``, the type before, still read) took
6.2 ms at 0.955 and HNSW32 over 8-bit codes 3.3 ms at 0.95 after 15 minutes of building
(2 minutes for the fast-scan index).

Both types search by inner product (cosine on normalised vectors) and accept a filter as
allowed ids or a row mask, passed in FAISS ``SearchParameters``. The exact type keeps the
caller's int64 ids (any values: content hashes need not be contiguous); the approximate
type's ids are its rows ``0 .. n - 1``, the rows of the float16 index that re-ranks it.
Both are read with ``IO_FLAG_MMAP_IFC``: the exact type's codes (and IVF-SQ8's lists)
stay pages of the file, in the page cache, shared by every process that serves it, and
loading costs milliseconds. FAISS 1.15 copies the fast-scan type's block inverted lists
into each process's memory instead (about 100 MB at 1M vectors of 384 dimensions; its
float16 re-ranking vectors stay mapped). An index read this way is read-only: adding to
it or removing from it fails a FAISS assertion, which aborts the process, so an update
writes a new file and maps that.
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
IVF_PQ = "ivf-pq4fs"  # 4-bit PQ fast-scan codes, re-ranked on the float16 vectors
IVF_SQ8 = "ivf-sq8"  # indexes written before format 8: read and searched, no longer written

_CALIBRATION_QUERIES = 512
_RECALL_K = 10
_TRAIN_POINTS_PER_LIST = 64  # FAISS warns below 39 training points a list
_ADD_BLOCK = 65_536
# candidates the fast-scan codes hand to the float16 re-ranking, the smallest that reaches
# the target chosen with nprobe: at 1M synthetic vectors of 384 dimensions recall@10
# stopped rising from 200 (0.971 at 200 and 800, nprobe 48), at 20k clustered vectors of
# 32 dimensions from 400 (0.71 at 200, 0.99 at 400; docs/performance.md)
SHORTLISTS = (256, 512, 1024, 2048)
# a search for k results re-ranks at least 10k candidates: at 1M synthetic vectors recall@100
# of a k=100 search (Searcher's candidates) was 0.887 / 0.930 / 0.936 / 0.936 with 256 /
# 512 / 1,024 / 2,560 candidates (IVF-SQ8 at the same nprobe: 0.933), on 20k clustered
# 32-dimensional vectors 0.860 / 0.919 / 0.925 / 0.925 with 256 / 512 / 1,024 / 2,048
# (IVF-SQ8: 0.924)
_CANDIDATES_PER_RESULT = 10


@dataclass(frozen=True)
class AnnConfig:
    """What decides the index type and its search parameters.

    ``min_chunks``: from this many vectors up the index is approximate (IVF-PQ fast scan,
    re-ranked), below it exact. ``target_recall``: recall@10 against exact search that
    calibration reaches.
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
    """The index type for ``n`` vectors: :data:`EXACT` or :data:`IVF_PQ`."""
    return IVF_PQ if n >= max(config.min_chunks, 1) and n >= 2 * _TRAIN_POINTS_PER_LIST else EXACT


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


def pq_size(dim: int) -> int:
    """Sub-quantizers of the PQ codes: one for every 2 dimensions (4 bits each, so a code
    is ``dim / 4`` bytes); every dimension its own for an odd ``dim``. At 1M vectors of
    384 dimensions half as many (``PQ96``) needed 4x the shortlist for a lower recall
    (0.969 with 800 candidates, against 0.971 with 200)."""
    return dim // 2 if dim % 2 == 0 else dim


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
    factory = f"IVF{lists_for(n)},PQ{pq_size(dim)}x4fs"
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def exact_rows(vectors: np.ndarray) -> faiss.Index:
    """An exact float16 index of ``vectors`` (n, dim) whose ids are the rows (the re-ranking
    index of the approximate type; qa.index.faiss_store writes the same one)."""
    index = faiss.IndexScalarQuantizer(
        vectors.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def with_refine(
    base: faiss.Index, exact: faiss.Index, shortlist: int = SHORTLISTS[0]
) -> faiss.Index:
    """``base`` (an :data:`IVF_PQ` index, ids = rows) with a shortlist of ``shortlist``
    candidates (at least ``10k``) re-ranked on ``exact`` (float16, the same rows): a FAISS
    ``IndexRefine``, whose ``k_factor`` field holds the shortlist (:func:`search_parameters`
    turns it into the factor of each ``k``). Other types are returned as they are. Raises
    ValueError when the two do not hold the same rows or ``shortlist`` < 1."""
    if shortlist < 1:
        raise ValueError(f"shortlist must be >= 1, got {shortlist}")
    if kind_of(base) != IVF_PQ:
        return base
    if exact.ntotal != base.ntotal or exact.d != base.d:
        raise ValueError(
            f"the re-ranking index holds {exact.ntotal} rows of {exact.d} dimensions, "
            f"the index {base.ntotal} of {base.d}"
        )
    refined = faiss.IndexRefine(base, exact)  # the wrapper keeps both alive with it
    refined.k_factor = float(shortlist)
    return refined


def shortlist_of(index: faiss.Index) -> int | None:
    """The shortlist a re-ranked index hands to its float16 vectors; None for the others."""
    return int(index.k_factor) if isinstance(index, faiss.IndexRefine) else None


def base_of(index: faiss.Index) -> faiss.Index:
    """The index itself, or the approximate index under its re-ranking."""
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.base_index)
    return index


def build(
    vectors: np.ndarray,
    ids: np.ndarray | None = None,
    config: AnnConfig | None = None,
    *,
    seed: int = 0,
    exact: faiss.Index | None = None,
) -> faiss.Index:
    """The index for ``vectors`` (n, dim), float32, normalised) under int64 ``ids`` (n,),
    unique, any value but -1; ``None``: the rows ``0 .. n - 1``.

    The approximate type is trained on a sample (64 points a list), re-ranked on ``exact``
    (the float16 index of the same rows, :func:`exact_rows`; made here when not given) and
    its ``nprobe`` and shortlist calibrated (:func:`calibrate`) on up to 512 of the
    vectors, held out of training and never returned while calibrating; it is returned
    under its re-ranking (:func:`with_refine`; :func:`save`
    writes the approximate part only). Raises ``ValueError`` on mismatched shapes, repeated
    ids, or ids other than the rows for the approximate type.
    """
    config = config or AnnConfig()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.arange(len(vectors), dtype=np.int64)
    ids = rows if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
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
    approximate = kind_for(n, config) == IVF_PQ
    if approximate and not np.array_equal(ids, rows):
        raise ValueError("the approximate index's ids must be its rows 0 .. n - 1")
    # calibration queries: vectors held out of training and never found while nprobe is
    # chosen, so that they are new to the index, as questions are
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
        ivf.cp.seed = seed
        index.train(vectors[np.sort(rng.choice(pool, sample, replace=False))])
    for start in range(0, n, _ADD_BLOCK):
        stop = min(start + _ADD_BLOCK, n)
        index.add_with_ids(vectors[start:stop], ids[start:stop])
    if not approximate:
        return index
    refined = with_refine(index, exact if exact is not None else exact_rows(vectors))
    queries = vectors[held]
    # exact top 10 among the other vectors: enough neighbours that the held-out ones
    # (skipped) leave 10
    k = min(_RECALL_K + len(held), n)
    _, nearest = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    truth = [ids[r[kept[r]][:_RECALL_K]] for r in nearest]
    calibrate(refined, queries, truth, config.target_recall, skip=ids[held])
    return refined


def calibrate(
    index: faiss.Index,
    queries: np.ndarray,
    truth: list[np.ndarray],
    target_recall: float,
    skip: np.ndarray | None = None,
) -> float:
    """Set the IVF index's ``nprobe`` to the smallest of :func:`nprobe_steps` whose
    recall@10 on ``queries`` (q, dim) against ``truth`` (each query's exact top 10 ids
    among those in the index) reaches ``target_recall``, or to every list, and a re-ranked
    index's shortlist to the smallest of :data:`SHORTLISTS` that reaches it with that
    ``nprobe``; return the recall reached.

    :func:`build` gives it up to 512 of the vectors, held out of training and never found
    (their ids are ``skip``): vectors the index has not seen, as a question is. Queries
    that are vectors in the index (each one's own id left out) overstate the recall of new
    ones: at 20,000 clustered vectors 0.95 on those gave 0.946 on new queries.
    """
    ivf = faiss.extract_index_ivf(base_of(index))
    xq = np.ascontiguousarray(queries, dtype=np.float32)
    excluded = None
    if skip is not None and len(skip):
        skipped = faiss.IDSelectorBatch(np.ascontiguousarray(skip, dtype=np.int64))
        excluded = faiss.IDSelectorNot(skipped)
    refined = index if isinstance(index, faiss.IndexRefine) else None

    def recall_of(nprobe: int, shortlist: int) -> float:
        ivf.nprobe = nprobe
        if refined is not None:
            refined.k_factor = float(shortlist)
        params = search_parameters(index, _RECALL_K, excluded)
        _, found = index.search(xq, _RECALL_K, params=params)
        return recall_at_lists(truth, found)

    # nprobe first, with the longest shortlist (so that the shortlist does not hold the
    # recall back), then the shortest shortlist that keeps the target at that nprobe:
    # recall grows with both, and nprobe is what a search's time follows
    longest = SHORTLISTS[-1]
    recall = 0.0
    for nprobe in nprobe_steps(int(ivf.nlist)):
        recall = recall_of(nprobe, longest)
        if recall >= target_recall:
            break
    if refined is None or recall < target_recall:
        return recall
    for shortlist in SHORTLISTS[:-1]:
        shorter = recall_of(int(ivf.nprobe), shortlist)
        if shorter >= target_recall:
            return shorter
    refined.k_factor = float(longest)
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
    """:data:`EXACT`, :data:`IVF_PQ` or :data:`IVF_SQ8` for an index made here (or its
    re-ranking)."""
    try:
        ivf = faiss.extract_index_ivf(base_of(index))
    except RuntimeError:
        return EXACT
    return IVF_PQ if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQFastScan) else IVF_SQ8


def nprobe_of(index: faiss.Index) -> int | None:
    """The calibrated ``nprobe`` of an IVF index; ``None`` for the exact type."""
    if kind_of(index) == EXACT:
        return None
    return int(faiss.extract_index_ivf(base_of(index)).nprobe)


def save(index: faiss.Index, path: Path) -> int:
    """Write ``index`` to the file ``path`` (FAISS format, search parameters included;
    of a re-ranked index the approximate part only, :func:`load_mmap` joins it to its
    float16 index again); return its size in bytes."""
    faiss.write_index(base_of(index), str(path))
    return path.stat().st_size


def load_mmap(
    path: Path, exact: faiss.Index | None = None, shortlist: int = SHORTLISTS[0]
) -> faiss.Index:
    """Read the index at ``path`` with ``IO_FLAG_MMAP_IFC``: the exact type's codes and
    IVF-SQ8's inverted lists are pages of the file, shared by every process reading it;
    the fast-scan type's block lists are copied into memory (FAISS 1.15). An
    :data:`IVF_PQ` index is returned re-ranked on ``exact`` (:func:`with_refine`, with
    the ``shortlist`` it was calibrated to: :func:`shortlist_of` before :func:`save`),
    which it needs. The result is read-only: never call ``add_with_ids`` or ``remove_ids`` on it
    (a FAISS assertion aborts the process). Raises ``RuntimeError`` when the file is not a
    FAISS index, ``ValueError`` when an :data:`IVF_PQ` index comes without its ``exact``
    index or with one of other rows."""
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    if kind_of(index) != IVF_PQ:
        return index
    if exact is None:
        raise ValueError(f"{path} is re-ranked on float16 vectors: give their exact index")
    if exact.ntotal != index.ntotal:
        raise ValueError(f"{path} holds {index.ntotal} vectors, its exact index {exact.ntotal}")
    return with_refine(index, exact, shortlist)


def search(
    index: faiss.Index, vector: np.ndarray, k: int, ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (m,), scores float32 (m,)) of the ``k`` nearest vectors by inner
    product, best first, m <= k; with ``ids``, only among those ids.

    ``vector``: one query, shape (dim,) or (1, dim). The approximate type's shortlist
    (calibrated, at least ``10k``) is re-ranked on float16 vectors. With a filter, the IVF
    index visits ``nprobe / sqrt(fraction)`` lists (at most all of them), where
    ``fraction`` is the share of the index the filter allows, so a narrow filter still
    fills ``k``: measured
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
        params = search_parameters(index, k, selector, allowed)
        scores, found = index.search(q, k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)
    keep = found[0] != -1  # FAISS marks a missing result with id -1
    return found[0][keep], scores[0][keep]


def search_parameters(
    index: faiss.Index,
    k: int,
    selector: faiss.IDSelector | None = None,
    allowed: int | None = None,
) -> faiss.SearchParameters:
    """FAISS search parameters for ``k`` results: the IVF types' saved ``nprobe``, widened
    to ``nprobe / sqrt(share allowed)`` under a ``selector`` that allows ``allowed`` of
    the vectors (not widened when ``allowed`` is None); the re-ranked type re-ranks its
    shortlist (:func:`shortlist_of`) or ``10k`` candidates, whichever is more."""
    try:  # one lookup of the IVF part a search (kind_of would look twice)
        ivf = faiss.extract_index_ivf(base_of(index))
    except RuntimeError:  # the exact type
        params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return params
    inner = faiss.SearchParametersIVF()
    inner.nprobe = int(ivf.nprobe)
    if selector is not None:
        inner.sel = selector
    if selector is not None and allowed is not None:
        scale = 1 / math.sqrt(min(allowed / max(int(index.ntotal), 1), 1.0))
        inner.nprobe = int(min(ivf.nlist, math.ceil(ivf.nprobe * scale)))
    if not isinstance(index, faiss.IndexRefine):
        return inner
    outer = faiss.IndexRefineSearchParameters()
    k = max(k, 1)
    candidates = max(float(index.k_factor), float(_CANDIDATES_PER_RESULT * k))
    outer.k_factor = (candidates + 0.5) / k  # FAISS truncates k * k_factor: never one short
    outer.base_index_params = inner  # FAISS's wrapper keeps ``inner`` alive with ``outer``
    return outer


__all__ = [
    "EXACT",
    "IVF_PQ",
    "IVF_SQ8",
    "SHORTLISTS",
    "AnnConfig",
    "base_of",
    "build",
    "calibrate",
    "exact_rows",
    "kind_for",
    "kind_of",
    "lists_for",
    "load_mmap",
    "make_index",
    "nprobe_of",
    "nprobe_steps",
    "pq_size",
    "recall_at",
    "recall_at_lists",
    "save",
    "search",
    "search_parameters",
    "search_rows",
    "shortlist_of",
    "with_refine",
]
