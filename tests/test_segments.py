"""Generations that cost what changed: an update writes one segment with the changed
documents only; dead chunks neither match nor count; compaction; BM25 over segments."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from qa.builder import COMPACT_DEAD_SHARE, build_index
from qa.engine import Engine
from qa.index import IndexSpec, load_current, read_manifest, rollback
from qa.index.terms import SegmentedBM25, TermCounts
from qa.lexical import BM25Index
from qa.search import FusionConfig, Searcher
from qa.settings import Settings
from tests.fakes import FakeEmbedder

SPEC = IndexSpec("fake-embedder", 192, 32)
TOPICS = [
    "apples", "bridges", "copper", "dolphins", "engines", "falcons", "glaciers", "harbours",
    "islands", "jasmine", "kettles", "lanterns", "meadows", "nickel", "orchards", "pianos",
]  # fmt: skip


def write_corpus(corpus: Path, topics: list[str]) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for topic in topics:
        (corpus / f"{topic}.md").write_text(
            f"# {topic.title()}\n\nThis note is about {topic}. People who study {topic} "
            f"write long reports on {topic} every year.\n",
            "utf-8",
        )


def update(corpus: Path, index: Path, embedder: FakeEmbedder | None = None):
    return build_index(corpus, index, embedder or FakeEmbedder(), SPEC, skip_if_unchanged=True)


def files_of(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """(inode, mtime in ns, content) of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def ask_ids(index: Path, question: str, mode: str = "hybrid") -> list[tuple[str, float]]:
    snapshot = load_current(index, SPEC)
    embedder = FakeEmbedder()
    hits = Searcher(snapshot, fusion=FusionConfig(mode=mode)).search(
        question, embedder.embed([question])[0], 5
    )
    return [(h.chunk.doc_id, round(h.score, 5)) for h in hits]


def test_an_update_writes_only_the_changed_document(tmp_path: Path) -> None:
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    write_corpus(corpus, TOPICS)
    update(corpus, index)
    first_segment = files_of(index / "segments" / "seg-000001")

    (corpus / "copper.md").write_text("# Wire\n\nA wire carries current.\n", "utf-8")
    counter = FakeEmbedder()
    report = update(corpus, index, counter)

    assert report.changed == ["copper.md"] and report.generation == 2
    assert files_of(index / "segments" / "seg-000001") == first_segment, "not rewritten"
    new = index / "segments" / "seg-000002" / "documents.jsonl"
    assert [json.loads(line)["doc_id"] for line in new.read_text("utf-8").splitlines()] == [
        "copper.md"
    ]
    manifest = read_manifest(report.path)
    holders = {d: m["segment"] for d, m in manifest["documents"].items()}
    assert holders.pop("copper.md") == "seg-000002"
    assert set(holders.values()) == {"seg-000001"}
    assert counter.texts_embedded <= 4, "only the changed document's texts are embedded"
    # the new text is found; the old version's words no longer match anything
    assert ask_ids(index, "wire current")[0][0] == "copper.md"
    assert ask_ids(index, "copper", mode="bm25") == []


def test_updated_segments_rank_exactly_as_a_fresh_build(tmp_path: Path) -> None:
    """Dead chunks do not count in BM25's statistics: scores equal a fresh build's."""
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    write_corpus(corpus, TOPICS)
    update(corpus, index)
    (corpus / "pianos.md").write_text("# Pianos\n\nA piano has 88 keys and copper.\n", "utf-8")
    (corpus / "falcons.md").unlink()
    report = update(corpus, index)
    assert len(read_manifest(report.path)["segments"]) == 2
    fresh = tmp_path / "fresh"
    build_index(corpus, fresh, FakeEmbedder(), SPEC)
    for question in ("copper keys", "falcons", "reports every year on meadows", "88 keys"):
        for mode in ("bm25", "hybrid", "dense"):
            assert ask_ids(index, question, mode) == ask_ids(fresh, question, mode)


def test_compaction_copies_live_chunks_into_one_segment(tmp_path: Path) -> None:
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    write_corpus(corpus, TOPICS)
    update(corpus, index)
    before = load_current(index, SPEC)
    ids_before = dict(zip(before.chunk_ids.tolist(), before.chunks(before.chunk_ids), strict=True))
    removed = TOPICS[: int(len(TOPICS) * COMPACT_DEAD_SHARE) + 2]
    for topic in removed:
        (corpus / f"{topic}.md").unlink()
    counter = FakeEmbedder()
    report = update(corpus, index, counter)
    manifest = read_manifest(report.path)
    assert list(manifest["segments"]) == ["seg-000002"], "compacted into one new segment"
    assert counter.texts_embedded == 0, "copied, not embedded again"
    after = load_current(index, SPEC)
    assert after.dead_chunks == 0
    kept = {i: c for i, c in ids_before.items() if c.doc_id.removesuffix(".md") not in removed}
    assert dict(zip(after.chunk_ids.tolist(), after.chunks(after.chunk_ids), strict=True)) == kept
    # the old segment stays while a kept generation names it, and goes after
    assert (index / "segments" / "seg-000001").is_dir()
    (corpus / "extra.md").write_text("# Extra\n\nOne more note.\n", "utf-8")
    update(corpus, index)
    assert not (index / "segments" / "seg-000001").exists()


def test_rollback_serves_the_old_version_from_the_shared_segment(tmp_path: Path) -> None:
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    write_corpus(corpus, TOPICS)
    update(corpus, index)
    (corpus / "copper.md").write_text("# Copper\n\nCopper wire carries current.\n", "utf-8")
    update(corpus, index)
    rollback(index, SPEC)
    snapshot = load_current(index, SPEC)
    assert snapshot.generation == 1
    doc = snapshot.document("copper.md")
    assert doc is not None and "People who study copper" in doc.text
    report = update(corpus, index)  # the next update starts again from generation 1
    assert report.generation == 3 and report.changed == ["copper.md"]
    assert set(read_manifest(report.path)["segments"]) == {"seg-000001", "seg-000003"}
    assert not (index / "segments" / "seg-000002").exists()


def test_engine_follows_a_segment_update(settings: Settings) -> None:
    corpus = Path(settings.corpus_dir)
    write_corpus(corpus, TOPICS)
    embedder = FakeEmbedder()
    build_index(
        corpus,
        Path(settings.index_dir),
        embedder,
        SPEC.__class__(
            settings.embedding_model, settings.chunk_tokens, settings.chunk_overlap_tokens
        ),
    )
    engine = Engine(settings, embedder=embedder)
    engine.load()
    (corpus / "glaciers.md").write_text("# Glaciers\n\nIce moves slowly downhill.\n", "utf-8")
    build_index(corpus, Path(settings.index_dir), embedder, engine.spec, skip_if_unchanged=True)
    assert engine.reload_if_changed()
    answer = engine.ask("ice moves downhill")
    assert answer.passages[0].citation.doc_id == "glaciers.md"
    assert answer.index.generation == 2


WORDS = st.sampled_from(["red", "green", "blue", "cyan", "stone", "river", "42", "v1.2"])


@hsettings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.lists(WORDS, min_size=1, max_size=8).map(" ".join), min_size=2, max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=3),
    dead=st.lists(st.integers(0, 29), max_size=10),
    query=st.lists(WORDS, min_size=1, max_size=3).map(" ".join),
)
def test_segmented_bm25_equals_bm25s_over_the_live_chunks(
    texts: list[str], cuts: list[int], dead: list[int], query: str
) -> None:
    bounds = sorted({0, len(texts), *(c for c in cuts if c < len(texts))})
    live = np.ones(len(texts), dtype=bool)
    live[[d for d in dead if d < len(texts)]] = False
    parts = [
        (TermCounts.build(texts[lo:hi]), live[lo:hi], lo) for lo, hi in itertools.pairwise(bounds)
    ]
    ours = SegmentedBM25(parts, len(texts)).scores(query)
    assert (ours[~live] == 0).all()
    live_texts = [t for t, keep in zip(texts, live, strict=True) if keep]
    if live_texts:
        reference = BM25Index.build(live_texts).scores(query)
        assert ours[live] == pytest.approx(reference, abs=1e-5)
