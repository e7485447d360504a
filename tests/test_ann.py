"""qa.ann: index type by size, recall against exact search, memory-mapped load, id filters."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from qa import ann

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int, centers: int = 50) -> np.ndarray:
    """Unit vectors around random centres (embeddings are clustered, not uniform)."""
    rng = np.random.default_rng(seed)
    c = unit(np.random.default_rng(99).standard_normal((centers, DIM)))
    return unit(c[rng.integers(0, centers, n)] + 0.25 * rng.standard_normal((n, DIM)))


def hash_ids(n: int, seed: int = 1) -> np.ndarray:
    """Non-contiguous int64 ids over the whole range, as content hashes are."""
    ids = np.random.default_rng(seed).integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    assert len(np.unique(ids)) == n
    return ids


def exact_top(xb: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(xb @ q), kind="stable")[:k]
    return ids[order]


@pytest.fixture(scope="module")
def big() -> tuple[np.ndarray, np.ndarray, object]:
    """20,000 vectors over the approximate type's threshold; its ids are the rows."""
    xb = clustered(20_000, seed=0)
    index = ann.build(xb, None, ann.AnnConfig(min_chunks=5_000, target_recall=0.95))
    return xb, np.arange(len(xb)), index


def test_type_follows_size() -> None:
    config = ann.AnnConfig(min_chunks=5_000)
    assert ann.kind_for(4_999, config) == ann.EXACT
    assert ann.kind_for(5_000, config) == ann.IVF_PQ
    assert ann.kind_of(ann.make_index(100, DIM, config)) == ann.EXACT
    assert ann.kind_of(ann.make_index(10_000, DIM, config)) == ann.IVF_PQ
    assert ann.pq_size(384) == 192 and ann.pq_size(33) == 33
    assert ann.lists_for(1_000_000) == 1024
    assert ann.lists_for(100_000) == 256
    assert ann.lists_for(1_000) <= 1_000 // 64


def test_nprobe_steps_are_powers_of_two_and_halfway_steps() -> None:
    assert ann.nprobe_steps(64) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert ann.nprobe_steps(100) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 100]
    assert ann.nprobe_steps(1) == [1]


def test_calibration_stops_at_a_step_or_at_every_list(big) -> None:
    xb, ids, index = big
    ivf = faiss.extract_index_ivf(ann.base_of(index))
    assert int(ivf.nprobe) in ann.nprobe_steps(int(ivf.nlist))
    assert ann.shortlist_of(index) in ann.SHORTLISTS
    copy = ann.with_refine(faiss.clone_index(ann.base_of(index)), ann.exact_rows(xb))
    queries = clustered(100, seed=8)
    truth = [exact_top(xb, ids, q, 10) for q in queries]

    def recall_with(nprobe: int, shortlist: int) -> float:
        faiss.extract_index_ivf(ann.base_of(copy)).nprobe = nprobe
        copy.k_factor = float(shortlist)
        found = np.stack([ann.search(copy, q, 10)[0] for q in queries])
        return ann.recall_at(np.stack(truth), found)

    assert ann.calibrate(copy, queries, truth, 0.95) >= 0.95
    chosen = int(faiss.extract_index_ivf(ann.base_of(copy)).nprobe)
    shortlist = ann.shortlist_of(copy)
    assert shortlist is not None
    assert recall_with(chosen, shortlist) >= 0.95  # what calibration measured, searched
    steps = ann.nprobe_steps(int(ivf.nlist))
    if chosen > 1:  # the step before falls short with every shortlist
        before = steps[steps.index(chosen) - 1]
        assert all(recall_with(before, s) < 0.95 for s in ann.SHORTLISTS)
    if shortlist > ann.SHORTLISTS[0]:  # the shorter shortlist falls short at that nprobe
        shorter = ann.SHORTLISTS[ann.SHORTLISTS.index(shortlist) - 1]
        assert recall_with(chosen, shorter) < 0.95
    ann.calibrate(copy, queries, truth, 1.01)  # unreachable: every list, longest shortlist
    assert faiss.extract_index_ivf(ann.base_of(copy)).nprobe == ivf.nlist
    assert ann.shortlist_of(copy) == ann.SHORTLISTS[-1]


def test_small_index_is_exact_with_its_ids() -> None:
    xb = clustered(500, seed=2)
    ids = hash_ids(len(xb), seed=3)
    index = ann.build(xb, ids, ann.AnnConfig(min_chunks=1_000))
    assert ann.kind_of(index) == ann.EXACT
    assert ann.nprobe_of(index) is None
    for q in clustered(20, seed=4):
        found, scores = ann.search(index, q, 10)
        best = np.sort(xb @ q)[::-1][:10]
        # float16 rounding may swap two neighbours whose scores differ by < 1e-3, no more
        true_scores = xb[[int(np.flatnonzero(ids == i)[0]) for i in found]] @ q
        np.testing.assert_allclose(true_scores, best, atol=2e-3)
        np.testing.assert_allclose(scores, best, atol=2e-3)
        assert len(np.intersect1d(found, exact_top(xb, ids, q, 10))) >= 9
        assert np.all(np.diff(scores) <= 0)


def test_approximate_index_reaches_recall_on_new_queries(big) -> None:
    xb, ids, index = big
    assert ann.kind_of(index) == ann.IVF_PQ
    nprobe = ann.nprobe_of(index)
    assert nprobe is not None and 1 <= nprobe <= 128
    queries = clustered(200, seed=5)
    truth = np.stack([exact_top(xb, ids, q, 10) for q in queries])
    found = np.stack([ann.search(index, q, 10)[0] for q in queries])
    assert ann.recall_at(truth, found) >= 0.95


def test_a_search_for_100_keeps_its_100_as_good_as_8_bit_codes_did(big) -> None:
    """Searcher asks for 100 dense candidates: recall@100 of a k=100 search must not fall
    because the shortlist was calibrated for 10 (256 candidates gave 0.86 here, IVF-SQ8
    at the same nprobe 0.92)."""
    xb, ids, index = big
    queries = clustered(200, seed=17)
    truth = np.stack([exact_top(xb, ids, q, 100) for q in queries])
    found = np.stack([ann.search(index, q, 100)[0] for q in queries])
    assert ann.recall_at(truth, found) >= 0.9


def test_the_re_ranked_candidates_are_never_one_short(big) -> None:
    _, _, index = big
    shortlist = ann.shortlist_of(index)
    assert shortlist is not None
    for k in range(1, 400):
        params = ann.search_parameters(index, k)
        assert int(k * params.k_factor) == max(shortlist, 10 * k)


def test_calibration_lowers_nprobe_for_a_lower_target(big) -> None:
    xb, ids, index = big
    high = ann.nprobe_of(index)
    low_index = ann.build(xb, ids, ann.AnnConfig(min_chunks=5_000, target_recall=0.5))
    low = ann.nprobe_of(low_index)
    assert low is not None and high is not None and low < high


def test_saved_index_loads_memory_mapped_with_same_results(big, tmp_path: Path) -> None:
    xb, _, index = big
    path = tmp_path / "vectors.faiss"
    size = ann.save(index, path)
    assert size == path.stat().st_size
    # 4-bit codes, one per 2 dimensions (a byte per 4), ids and centroids: the float16
    # vectors that re-rank them are another file's
    assert size < xb.nbytes / 4
    with pytest.raises(ValueError, match="exact index"):
        ann.load_mmap(path)
    with pytest.raises(ValueError, match="vectors"):
        ann.load_mmap(path, ann.exact_rows(xb[:100]))
    exact_path = tmp_path / "exact.faiss"
    ann.save(ann.exact_rows(xb), exact_path)
    exact = ann.load_mmap(exact_path)
    loaded = ann.load_mmap(path, exact, ann.shortlist_of(index) or 0)
    assert ann.nprobe_of(loaded) == ann.nprobe_of(index)
    assert ann.shortlist_of(loaded) == ann.shortlist_of(index)
    if sys.platform.startswith("linux"):  # the float16 vectors that re-rank stay mapped
        maps = Path("/proc/self/maps").read_text()
        assert str(exact_path) in maps, "the float16 index is not mapped into the process"
    for q in clustered(20, seed=6):
        a_ids, a_scores = ann.search(index, q, 10)
        b_ids, b_scores = ann.search(loaded, q, 10)
        assert list(a_ids) == list(b_ids)
        np.testing.assert_allclose(a_scores, b_scores)


def test_exact_index_loads_memory_mapped(tmp_path: Path) -> None:
    xb = clustered(300, seed=7)
    ids = hash_ids(len(xb), seed=8)
    index = ann.build(xb, ids)
    path = tmp_path / "small.faiss"
    ann.save(index, path)
    loaded = ann.load_mmap(path)
    q = xb[17]
    assert ann.search(loaded, q, 1)[0][0] == ids[17]
    assert list(ann.search(loaded, q, 5)[0]) == list(ann.search(index, q, 5)[0])


@pytest.mark.parametrize("size", [300, 20_000])
def test_filter_returns_only_allowed_ids_best_first(size: int, big) -> None:
    if size == 20_000:
        xb, ids, index = big
    else:
        xb = clustered(size, seed=9)
        ids = hash_ids(size, seed=10)
        index = ann.build(xb, ids)
    rng = np.random.default_rng(11)
    allowed = rng.choice(ids, 40, replace=False)
    mask = np.isin(ids, allowed)
    for q in clustered(10, seed=12):
        found, scores = ann.search(index, q, 10, ids=allowed)
        assert len(found) == 10, "a narrow filter must still fill k"
        assert set(found) <= set(allowed)
        truth = exact_top(xb[mask], ids[mask], q, 10)
        assert len(np.intersect1d(found, truth)) >= 9  # float16 re-ranking may swap near ties
        assert np.all(np.diff(scores) <= 0)


def test_filter_with_no_known_id_finds_nothing(big) -> None:
    _, _, index = big
    unknown = np.asarray([10**9, 10**9 + 1])  # the ids are the rows 0 .. 19,999
    assert len(ann.search(index, clustered(1, seed=13)[0], 5, ids=unknown)[0]) == 0
    assert len(ann.search(index, clustered(1, seed=13)[0], 5, ids=np.asarray([]))[0]) == 0


def test_the_approximate_index_is_re_ranked_on_its_float16_vectors(big) -> None:
    """The shortlist of 4-bit codes is scored again on the float16 vectors: the scores
    returned are the float16 inner products, not the codes' estimates."""
    xb, _, index = big
    half = xb.astype(np.float16).astype(np.float32)
    for q in clustered(10, seed=16):
        found, scores = ann.search(index, q, 10)
        np.testing.assert_allclose(scores, half[found] @ q, atol=1e-5)
    assert ann.with_refine(ann.exact_rows(xb[:5]), ann.exact_rows(xb[:5])) is not None
    with pytest.raises(ValueError, match="rows"):
        ann.with_refine(ann.base_of(index), ann.exact_rows(xb[:100]))


def test_bad_input_is_refused() -> None:
    xb = clustered(10, seed=14)
    with pytest.raises(ValueError, match="rows 0"):
        ann.build(clustered(200, seed=14), hash_ids(200), ann.AnnConfig(min_chunks=100))
    with pytest.raises(ValueError, match="unique"):
        ann.build(xb, np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match="ids for 10 vectors"):
        ann.build(xb, np.arange(9))
    index = ann.build(xb, np.arange(10))
    with pytest.raises(ValueError, match="dimension"):
        ann.search(index, np.ones(DIM + 1, dtype=np.float32), 3)
    with pytest.raises(ValueError, match="target_recall"):
        ann.AnnConfig(target_recall=1.5)


def test_empty_index_and_zero_k() -> None:
    index = ann.make_index(0, DIM)
    assert len(ann.search(index, np.ones(DIM, dtype=np.float32), 5)[0]) == 0
    xb = clustered(5, seed=15)
    index = ann.build(xb, np.arange(5))
    assert len(ann.search(index, xb[0], 0)[0]) == 0
    assert len(ann.search(index, xb[0], 50)[0]) == 5


def test_config_from_settings() -> None:
    from qa.settings import Settings

    config = ann.AnnConfig.from_settings(Settings(ann_min_chunks=7, ann_target_recall=0.9))
    assert (config.min_chunks, config.target_recall) == (7, 0.9)
    assert ann.AnnConfig.from_settings(Settings()) == ann.AnnConfig()


def test_a_search_leaves_the_threads_of_torch_and_faiss_as_they_were(big) -> None:
    """A search runs FAISS on one OpenMP thread; that setting is shared with torch, and a
    process that searched (a server, bench.build) must still embed on every core."""
    torch = pytest.importorskip("torch")
    xb, ids, index = big
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)  # so that a leak to 1 shows on a 1-core machine too
    try:
        ann.search(index, xb[0], 10)
        ann.search(index, xb[0], 10, ids[:50])
        assert faiss.omp_get_max_threads() == 2
        assert torch.get_num_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)
