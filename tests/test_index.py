from __future__ import annotations

import json
from pathlib import Path

import pytest

from qa.assemble import spec_from_settings
from qa.builder import build_index, index_freshness
from qa.engine import Engine
from qa.errors import IndexBusy, IndexCorrupt, IndexMismatch, IndexNotReady
from qa.index import (
    FORMAT_VERSION,
    current_generation_dir,
    index_lock,
    list_generations,
    load_current,
    read_manifest,
)
from qa.settings import Settings
from tests.fakes import FakeEmbedder

SEGMENT = Path("segments") / "seg-000001"


def build(settings: Settings, embedder: FakeEmbedder):
    return build_index(
        Path(settings.corpus_dir),
        Path(settings.index_dir),
        embedder,
        spec_from_settings(settings),
        keep_generations=settings.keep_generations,
    )


def test_manifest_names_model_settings_documents_and_checksums(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    report = build(settings, fake_embedder)
    manifest = read_manifest(report.path)
    assert manifest["format_version"] == FORMAT_VERSION == 8
    assert manifest["model"] == {
        "id": "fake-embedder",
        "dimension": 64,
        "embedding": "fp32+separate",
    }
    assert manifest["chunker"] == {"chunk_tokens": 192, "overlap_tokens": 32}
    assert set(manifest["documents"]) == {"nato-indo-pacific.txt", "notes/baking.md"}
    assert all(len(d["sha256"]) == 64 for d in manifest["documents"].values())
    assert manifest["counts"]["chunks"] == report.chunks > 0
    assert manifest["generation"] == 1 and manifest["built_at"]
    assert list(manifest["segments"]) == ["seg-000001"]
    assert all(d["segment"] == "seg-000001" for d in manifest["documents"].values())
    segment = json.loads((Path(settings.index_dir) / SEGMENT / "manifest.json").read_text("utf-8"))
    assert {
        "vectors.faiss",
        "chunk_ids.npy",
        "chunk_spans.npy",
        "documents.jsonl",
        "texts.txt",
        "tf_rows.npy",
    } <= set(segment["files"])


def test_no_pickle_anywhere_in_the_index(settings: Settings, fake_embedder: FakeEmbedder) -> None:
    build(settings, fake_embedder)
    import numpy as np

    index_dir = Path(settings.index_dir)
    assert list(index_dir.rglob("*.npy"))
    for path in index_dir.rglob("*.npy"):
        np.load(path, allow_pickle=False)  # raises if an object array was pickled
    for path in index_dir.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks pickled"


def test_chunk_table_round_trips_with_exact_offsets(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    build(settings, fake_embedder)
    data = load_current(Path(settings.index_dir), spec_from_settings(settings))
    chunks = data.chunks(data.chunk_ids)
    for chunk in chunks:
        doc = data.document(chunk.doc_id)
        assert doc is not None and doc.text[chunk.start : chunk.end] == chunk.text
    assert len(data.chunk_vectors(data.chunk_ids)) == len(chunks) == len(data) > 0


def test_index_built_with_other_settings_is_refused(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    build(settings, fake_embedder)
    other_model = settings.model_copy(update={"embedding_model": "another-model"})
    with pytest.raises(IndexMismatch, match="qa index build"):
        load_current(Path(settings.index_dir), spec_from_settings(other_model))
    other_chunks = settings.model_copy(update={"chunk_tokens": 64})
    with pytest.raises(IndexMismatch, match="chunker settings"):
        load_current(Path(settings.index_dir), spec_from_settings(other_chunks))


@pytest.mark.parametrize(
    "victim",
    [
        "vectors.faiss",
        "chunk_spans.npy",
        "texts.txt",
        "sentence_codes.npy",
        "sentence_scales.npy",
    ],
)
def test_corrupted_or_truncated_file_is_named(
    settings: Settings, fake_embedder: FakeEmbedder, victim: str
) -> None:
    build(settings, fake_embedder)
    path = Path(settings.index_dir) / SEGMENT / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorrupt, match=victim):
        load_current(Path(settings.index_dir), spec_from_settings(settings))
    path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    with pytest.raises(IndexCorrupt, match=victim):
        load_current(Path(settings.index_dir), spec_from_settings(settings))


def test_missing_index_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(IndexNotReady, match="qa index build"):
        load_current(tmp_path / "nothing")


def test_generations_switch_atomically_and_old_ones_are_pruned(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    index_dir = Path(settings.index_dir)
    for expected in (1, 2, 3):
        report = build(settings, fake_embedder)
        assert report.generation == expected
        assert current_generation_dir(index_dir) == report.path
    assert [p.name for p in list_generations(index_dir)] == ["gen-000002", "gen-000003"]
    assert not list(index_dir.glob("*.tmp"))


def test_unchanged_rebuild_embeds_nothing(settings: Settings) -> None:
    first = FakeEmbedder()
    build(settings, first)
    assert first.texts_embedded > 0
    second = FakeEmbedder()
    report = build(settings, second)
    assert second.texts_embedded == 0
    assert report.embedded == 0 and report.unchanged == 2


def test_changed_document_is_the_only_one_embedded(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    build(settings, fake_embedder)
    note = Path(settings.corpus_dir) / "notes" / "baking.md"
    note.write_text(note.read_text("utf-8") + "\nRest the loaf for an hour.\n", "utf-8")
    counter = FakeEmbedder()
    report = build(settings, counter)
    assert report.changed == ["notes/baking.md"]
    assert 0 < counter.texts_embedded <= 6


def test_a_second_build_is_refused_while_one_runs(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    with index_lock(Path(settings.index_dir)), pytest.raises(IndexBusy, match="running"):
        build(settings, fake_embedder)


def test_skipped_files_are_reported_and_the_build_goes_on(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    (Path(settings.corpus_dir) / "bad.txt").write_bytes(b"\xff\xfe\x00\x00")
    report = build(settings, fake_embedder)
    assert report.documents == 2
    assert report.skipped == [{"path": "bad.txt", "reason": "binary file (contains NUL bytes)"}]
    manifest = read_manifest(report.path)
    assert manifest["counts"]["skipped"] == 1


def test_freshness_tracks_the_corpus(settings: Settings, fake_embedder: FakeEmbedder) -> None:
    corpus, index_dir = Path(settings.corpus_dir), Path(settings.index_dir)
    spec = spec_from_settings(settings)
    assert index_freshness(corpus, index_dir, spec)[0] == "missing"
    build(settings, fake_embedder)
    assert index_freshness(corpus, index_dir, spec)[0] == "fresh"
    (corpus / "new.md").write_text("# New\n\nNew text.\n", "utf-8")
    state, why = index_freshness(corpus, index_dir, spec)
    assert state == "stale" and "1 added" in why
    other = spec_from_settings(settings.model_copy(update={"embedding_model": "x"}))
    assert index_freshness(corpus, index_dir, other)[0] == "mismatch"


def test_engine_reports_the_generation_it_serves(
    settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    build(settings, fake_embedder)
    engine = Engine(settings, embedder=fake_embedder)
    engine.load()
    assert engine.ask("sourdough starter").index.generation == 1
    build(settings, fake_embedder)
    assert engine.reload_if_changed()
    assert engine.ask("sourdough starter").index.generation == 2
    assert not engine.reload_if_changed()


def test_manifest_is_plain_json(settings: Settings, fake_embedder: FakeEmbedder) -> None:
    report = build(settings, fake_embedder)
    manifest = json.loads((report.path / "manifest.json").read_text("utf-8"))
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["generation"] == report.generation
    assert manifest["model"] == {
        "id": "fake-embedder",
        "dimension": fake_embedder.dimension,
        "embedding": "fp32+separate",
    }
    assert manifest["counts"]["documents"] == report.documents == len(manifest["documents"])
    assert manifest["counts"]["chunks"] == report.chunks
    assert {p.name for p in report.path.iterdir()} == {"manifest.json"}
    segment_dir = Path(settings.index_dir) / SEGMENT
    segment = json.loads((segment_dir / "manifest.json").read_text("utf-8"))
    on_disk = {p.relative_to(segment_dir).as_posix() for p in segment_dir.rglob("*") if p.is_file()}
    assert set(segment["files"]) == on_disk - {"manifest.json"}
