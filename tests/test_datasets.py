"""The committed BEIR evaluation sets under eval/: ids that resolve, sizes within bounds.

Fast and model-free: reads the files through ``qa.evaluation.load_dataset`` and directly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from qa.evaluation import load_dataset

EVAL = Path(__file__).resolve().parent.parent / "eval"
BEIR_SETS = sorted(p for p in EVAL.iterdir() if (p / "corpus.jsonl").is_file())
# (min docs, max docs) agreed for each set; a new set must be added here
BOUNDS = {
    "multilingual-de": (100, 1000),
    "keywords": (300, 3000),
    "manpages-en": (500, 3000),
    "pydocs-html": (1000, 3000),
    "identifiers": (2000, 3000),
}
MAX_CORPUS_BYTES = 2_000_000
MIN_QUERIES = 30


def corpus_rows(folder: Path) -> list[dict[str, str]]:
    lines = (folder / "corpus.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def qrels_rows(folder: Path) -> list[tuple[str, str, int]]:
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["query-id", "corpus-id", "score"]
    return [(q, d, int(s)) for q, d, s in rows[1:]]


def test_the_expected_sets_are_there() -> None:
    assert {p.name for p in BEIR_SETS} == set(BOUNDS)


@pytest.mark.parametrize("folder", BEIR_SETS, ids=lambda p: p.name)
def test_dataset_loads_and_ids_resolve(folder: Path) -> None:
    dataset = load_dataset(folder)
    rows = corpus_rows(folder)
    doc_ids = [row["_id"] for row in rows]
    assert len(doc_ids) == len(set(doc_ids)), "duplicate document ids"
    assert all(row["text"].strip() and row["title"].strip() for row in rows)

    query_ids = [
        json.loads(line)["_id"]
        for line in (folder / "queries.jsonl").read_text("utf-8").splitlines()
        if line.strip()
    ]
    assert len(query_ids) == len(set(query_ids)), "duplicate query ids"

    judged = qrels_rows(folder)
    assert len({(q, d) for q, d, _ in judged}) == len(judged), "a pair is judged twice"
    assert {q for q, _, _ in judged} <= set(query_ids), "qrels name an unknown query"
    assert {d for _, d, _ in judged} <= set(doc_ids), "qrels name an unknown document"
    assert {s for _, _, s in judged} <= {1, 2}

    # every query is judged and has a highly relevant document
    assert set(dataset.queries) == set(query_ids)
    for qid, docs in dataset.qrels.items():
        assert max(docs.values()) == 2, f"{qid} has no document judged 2"


@pytest.mark.parametrize("folder", BEIR_SETS, ids=lambda p: p.name)
def test_dataset_sizes(folder: Path) -> None:
    low, high = BOUNDS[folder.name]
    assert low <= len(corpus_rows(folder)) <= high
    assert (folder / "corpus.jsonl").stat().st_size < MAX_CORPUS_BYTES
    assert len(load_dataset(folder).queries) >= MIN_QUERIES
    assert (folder / "README.md").is_file()
