"""Retrieval with the Milvus store against the local store on one BEIR-form data set.

    .venv/bin/python -m bench.milvus_parity [--set ../shared/benchmarks/msmarco-5k]
        [--modes hybrid,dense,bm25] [--cache-dir .qa-cache]

The local index is the cached one of ``qa eval`` (qa.evaluation.index_for; built with the
bundled model when missing). Its chunks, vectors and sentences are copied into Milvus Lite
(embedded, a temporary ``.db``) through ``MilvusStore.write`` — nothing is embedded again —
and the same queries run through the same ``Searcher`` on both snapshots: nDCG@10,
Recall@100, MRR@10 (pytrec_eval) and p50/p95 of a search (query embedding included).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from qa.assemble import embedder_from_settings, spec_from_settings
from qa.evaluation import index_for, load_dataset, milvus_copy, run_queries, trec_metrics
from qa.index import load_current
from qa.search import FusionConfig, Searcher
from qa.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SET = ROOT.parent / "shared" / "benchmarks" / "msmarco-5k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", type=Path, default=DEFAULT_SET)
    parser.add_argument("--modes", default="hybrid,dense,bm25")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("pymilvus").setLevel(logging.ERROR)
    settings = Settings()
    cache_dir = args.cache_dir or Path(settings.cache_dir)
    embedder = embedder_from_settings(settings)
    spec = spec_from_settings(settings)
    dataset = load_dataset(args.set)

    began = time.perf_counter()
    local = load_current(index_for(dataset, cache_dir, embedder, spec), spec)
    print(f"local index: {len(local)} chunks ({time.perf_counter() - began:.1f} s to load/build)")

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        milvus = milvus_copy(local, str(Path(tmp) / "parity.db"), spec)
        took = time.perf_counter() - began
        print(
            f"milvus: {len(milvus)} chunks, "
            f"{milvus.manifest['counts']['sentences']} sentences written in {took:.1f} s"
        )
        embedder.embed(["warm up"])
        rows: list[dict[str, Any]] = []
        for mode in args.modes.split(","):
            config = FusionConfig(mode=mode)
            for name, snapshot in (("local (FAISS + bm25s)", local), ("Milvus Lite", milvus)):
                searcher = Searcher(
                    snapshot, candidates=max(settings.candidates, 300), fusion=config
                )
                run, latencies = run_queries(searcher, embedder, dataset.queries)
                metrics = trec_metrics(dataset.qrels, run)
                ordered = sorted(latencies)
                rows.append(
                    {
                        "mode": mode,
                        "store": name,
                        **metrics,
                        "p50": statistics.median(ordered),
                        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                    }
                )
    print(f"\n{args.set.name}: {len(dataset.queries)} queries, {len(local)} chunks\n")
    print("| mode | store | nDCG@10 | Recall@100 | MRR@10 | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['store']} | {r['ndcg@10']:.3f} | {r['recall@100']:.3f} | "
            f"{r['mrr@10']:.3f} | {r['p50']:.1f} | {r['p95']:.1f} |"
        )
    by_mode: dict[str, list[float]] = {}
    for r in rows:
        by_mode.setdefault(r["mode"], []).append(r["ndcg@10"])
    for mode, (a, b) in by_mode.items():
        print(f"{mode}: nDCG@10 Milvus - local = {b - a:+.4f}")


if __name__ == "__main__":
    main()
