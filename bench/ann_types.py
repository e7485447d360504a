"""Which approximate FAISS index for `qa.ann`: search time against recall@10, side by side.

    .venv/bin/python -m bench.ann_types --n 1000000 [--types ivf-sq8 ivf-pq4fs hnsw32-sq8]

On `bench.scale`'s synthetic vectors (384 dimensions, anisotropic; queries are fresh draws),
each type is built on the same vectors in this process and searched one query at a time on
one thread (k=100, like `Searcher.search`'s dense part), at a few settings of its search
parameter, and its recall@10 is measured against exact float32 search:

- ``ivf-sq8``: `IndexIVFScalarQuantizer` over 8-bit codes, ``sqrt(n)`` lists (the type of
  index formats 6-7), by ``nprobe``;
- ``ivf-pq4fs``: `IndexIVFPQFastScan` (``PQ{dim/2}x4fs``) whose shortlist is re-ranked on
  float16 vectors by `IndexRefine` (the type of format 8), by ``nprobe`` and shortlist;
- ``hnsw32-sq8``: `IndexHNSWSQ` (M=32, efConstruction 40) over 8-bit codes, by efSearch
  (1M vectors take about 15 minutes to build on 2 cores).

Build time is wall-clock and CPU seconds of this process; p50 is the median of 280 queries
after 20 warm-up ones. The output is a Markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from bench.scale import DIM, make_vectors
from qa import ann

Search = Callable[[np.ndarray, int], np.ndarray]


def timed(search: Search, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(p50 ms of a k=100 search, recall@10) of ``search(query (1, dim), k) -> ids``."""
    faiss.omp_set_num_threads(1)
    took, found = [], []
    for q in queries:
        began = time.perf_counter()
        ids = search(q[None, :], 100)
        took.append(time.perf_counter() - began)
        found.append(ids[:10])
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    recall = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)])
    return 1000 * statistics.median(took[20:]), float(recall)


def ivf_sq8(xb: np.ndarray, sample: np.ndarray) -> tuple[faiss.Index, list[Any]]:
    nlist = ann.lists_for(len(xb))
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(DIM), DIM, nlist, faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )  # fmt: skip
    index.train(sample)
    index.add(xb)
    settings = []
    for nprobe in (32, 48, 64):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        settings.append((f"nprobe {nprobe}", params))
    return index, settings


def ivf_pq4fs(xb: np.ndarray, sample: np.ndarray) -> tuple[faiss.Index, list[Any]]:
    """qa.ann's own type (``make_index``, ``exact_rows``, ``with_refine``), uncalibrated."""
    base = ann.make_index(len(xb), DIM, ann.AnnConfig(min_chunks=0))
    base.train(sample)
    base.add(xb)
    index = ann.with_refine(base, ann.exact_rows(xb))
    settings = []
    for nprobe in (32, 48, 64):
        for shortlist in (100, 256, 512):
            params = faiss.IndexRefineSearchParameters(k_factor=max(1.0, shortlist / 100))
            params.base_index_params = faiss.SearchParametersIVF(nprobe=nprobe)
            settings.append((f"nprobe {nprobe}, shortlist {max(shortlist, 100)}", params))
    return index, settings


def hnsw32_sq8(xb: np.ndarray, sample: np.ndarray) -> tuple[faiss.Index, list[Any]]:
    index = faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    index.train(sample)
    index.add(xb)
    settings = []
    for ef in (100, 160, 200, 256):
        settings.append((f"efSearch {ef}", faiss.SearchParametersHNSW(efSearch=ef)))
    return index, settings


TYPES = {"ivf-sq8": ivf_sq8, "ivf-pq4fs": ivf_pq4fs, "hnsw32-sq8": hnsw32_sq8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=list(TYPES))
    args = parser.parse_args()
    xb, xq = make_vectors(args.n, seed=1), make_vectors(args.queries, seed=2)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, truth = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = xb[np.sort(rng.choice(args.n, min(args.n, 65_536), replace=False))]
    load = os.getloadavg()[0]
    print(f"`python -m bench.ann_types --n {args.n}` ({os.cpu_count()} cores, faiss "
          f"{faiss.__version__}; 1-minute load average {load:.1f} at the start)")  # fmt: skip
    print()
    print("| index | build s (CPU s) | bytes a vector | setting | p50 ms, k=100 | recall@10 |")
    print("|---|---|---|---|---|---|")
    for name in args.types:
        began, cpu = time.perf_counter(), time.process_time()
        index, settings = TYPES[name](xb, sample)
        build = f"{time.perf_counter() - began:.0f} ({time.process_time() - cpu:.0f})"
        path = f"/tmp/qa-ann-types-{os.getpid()}.faiss"
        faiss.write_index(faiss.downcast_index(getattr(index, "base_index", index)), path)
        per = os.path.getsize(path) / args.n
        os.unlink(path)
        for label, params in settings:

            def search(q: np.ndarray, k: int, index: Any = index, params: Any = params) -> Any:
                return index.search(q, k, params=params)[1][0]

            p50, recall = timed(search, xq, truth)
            row = f"| {name} | {build} | {per:.0f} | {label} | {p50:.2f} | {recall:.3f} |"
            print(row, flush=True)
    load = os.getloadavg()[0]
    print(f"\n(1-minute load average {load:.1f} at the end; the re-ranked type also reads "
          "the float16 vectors, 768 bytes a vector, that exact search keeps anyway.)")  # fmt: skip


if __name__ == "__main__":
    main()
