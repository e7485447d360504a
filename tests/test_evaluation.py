from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from qa.errors import InvalidRequest
from qa.evaluation import evaluate, load_dataset, trec_metrics
from qa.index import IndexSpec
from tests.fakes import FakeEmbedder


def ranked(*doc_ids: str) -> dict[str, float]:
    return {d: float(len(doc_ids) - i) for i, d in enumerate(doc_ids)}


def test_metrics_match_trec_eval_definitions_by_hand() -> None:
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d5": 1}, "q3": {"d9": 1}}
    run = {"q1": ranked("d3", "d1", "d4", "d2"), "q2": ranked("d6", "d7"), "q3": {}}
    m = trec_metrics(qrels, run)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)  # linear gain, log2(rank + 1) discount
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((dcg / idcg + 0 + 0) / 3, abs=1e-6)
    assert m["recall@100"] == pytest.approx((1.0 + 0 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((0.5 + 0 + 0) / 3)


def test_mrr_is_cut_at_ten() -> None:
    docs = [f"x{i}" for i in range(10)] + ["rel"]
    m = trec_metrics({"q": {"rel": 1}}, {"q": ranked(*docs)})
    assert m["mrr@10"] == 0.0
    assert m["recall@100"] == 1.0


def write_dataset(root: Path, header: bool) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [
        {
            "_id": "a",
            "title": "Bread",
            "text": "Sourdough bread needs a starter of flour and water.",
        },
        {"_id": "b", "title": "Tyres", "text": "Change a flat tyre with a jack and a wrench."},
        {"_id": "c", "title": "", "text": "Photosynthesis turns light into chemical energy."},
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n", "utf-8")
    queries = [
        {"_id": "1", "text": "sourdough starter flour"},
        {"_id": "2", "text": "flat tyre jack"},
        {"_id": "3", "text": "unjudged query"},
    ]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries), "utf-8")
    lines = (["query-id\tcorpus-id\tscore"] if header else []) + ["1\ta\t2", "2\tb\t1"]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", "utf-8")
    return root


@pytest.mark.parametrize("header", [True, False])
def test_dataset_loading_with_or_without_header(tmp_path: Path, header: bool) -> None:
    ds = load_dataset(write_dataset(tmp_path / "ds", header))
    assert ds.queries == {"1": "sourdough starter flour", "2": "flat tyre jack"}
    assert ds.qrels == {"1": {"a": 2}, "2": {"b": 1}}


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"corpus\.jsonl"):
        load_dataset(tmp_path)


def test_eval_writes_nothing_into_a_read_only_dataset_and_caches(tmp_path: Path) -> None:
    ds_dir = write_dataset(tmp_path / "ds", header=True)
    for path in [ds_dir, ds_dir / "qrels", *ds_dir.rglob("*")]:
        os.chmod(path, stat.S_IREAD | stat.S_IEXEC if path.is_dir() else stat.S_IREAD)
    before = sorted(p.name for p in ds_dir.rglob("*"))
    try:
        embedder = FakeEmbedder()
        spec = IndexSpec("fake-embedder", 192, 32)
        first = evaluate(load_dataset(ds_dir), tmp_path / "cache", embedder, spec, mode="bm25")
        assert first["ndcg@10"] == 1.0 and first["queries"] == 2 and first["docs"] == 3
        assert set(first) == {"ndcg@10", "recall@100", "mrr@10", "queries", "docs", "mode",
                              "store", "latency_ms"}  # fmt: skip
        assert set(first["latency_ms"]) == {"p50", "p95"}
        calls = embedder.texts_embedded
        second = evaluate(load_dataset(ds_dir), tmp_path / "cache", embedder, spec, mode="dense")
        assert embedder.texts_embedded - calls <= 3, "second run only embeds the queries"
        assert second["mode"] == "dense"
    finally:
        for path in [ds_dir, *ds_dir.rglob("*")]:
            os.chmod(path, stat.S_IRWXU)
    assert sorted(p.name for p in ds_dir.rglob("*")) == before


def test_eval_with_the_milvus_store_ranks_as_the_local_one(tmp_path: Path) -> None:
    """`qa eval` with QA_VECTOR_STORE=milvus searches a Milvus Lite copy of the same index."""
    ds = load_dataset(write_dataset(tmp_path / "ds", header=True))
    embedder = FakeEmbedder()
    spec = IndexSpec("fake-embedder", 192, 32)
    for mode in ("hybrid", "bm25", "dense"):
        local = evaluate(ds, tmp_path / "cache", embedder, spec, mode=mode)
        milvus = evaluate(ds, tmp_path / "cache", embedder, spec, mode=mode, store="milvus")
        assert milvus["store"] == "milvus" and milvus["docs"] == local["docs"] == 3
        for metric in ("ndcg@10", "recall@100", "mrr@10"):
            assert milvus[metric] == pytest.approx(local[metric]), (mode, metric)
