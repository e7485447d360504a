"""Index format 6: memory-mapped segment columns, the vector index by segment size, filters
on the document column, document texts read per document (qa.index.segment, qa.index.local,
qa.index.faiss_store)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from qa import ann
from qa.ann import AnnConfig
from qa.documents import Chunk, Document
from qa.errors import IndexMismatch
from qa.index import Filters, GenerationPayload, IndexSpec, LocalIndexStore, load_current
from qa.index.local import LocalSnapshot
from qa.index.segment import SegmentPayload, byte_offsets, decode_sentences, encode_sentences
from qa.search import FusionConfig, Searcher

DIM = 32
SPEC = IndexSpec("synthetic", 192, 32)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(np.random.default_rng(99).standard_normal((40, DIM)))
    return unit(centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, DIM)))


def synthetic(docs: int, per_doc: int, seed: int = 0, word: str = "note") -> SegmentPayload:
    """``docs`` documents under folders a/ .. j/, ``per_doc`` chunks each (one sentence a
    chunk), clustered unit vectors."""
    documents, chunks, sentences = [], [], []
    for d in range(docs):
        parts = [f"{word} {d} part {i} é中🙂 text." for i in range(per_doc)]
        text = "\n".join(parts)
        doc = Document(f"{'abcdefghij'[d % 10]}/doc{d}.md", f"{'abcdefghij'[d % 10]}/doc{d}.md",
                       f"Doc {d}", text)  # fmt: skip
        documents.append(doc)
        at = 0
        for i, part in enumerate(parts):
            row = len(chunks)
            chunks.append(Chunk(doc.doc_id, at, at + len(part), part, i + 1, i + 1, None,
                                f"Doc {d} > part {i % 3}" if i % 2 else ""))  # fmt: skip
            sentences.append((row, at, at + len(part)))
            at += len(part) + 1
    n = len(chunks)
    ids = np.random.default_rng(seed + 7).permutation(np.arange(1, n + 1, dtype=np.int64) * 7919)
    return SegmentPayload(
        documents=documents,
        chunks=chunks,
        chunk_ids=ids,
        chunk_vectors=clustered(n, seed),
        sentences=np.asarray(sentences, dtype=np.int64),
        sentence_vectors=clustered(n, seed + 1),
        dimension=DIM,
    )


def publish(store: LocalIndexStore, segment: SegmentPayload) -> LocalSnapshot:
    counts: dict[str, int] = {}
    for c in segment.chunks:
        counts[c.doc_id] = counts.get(c.doc_id, 0) + 1
    documents = {
        d.doc_id: {
            "path": d.path,
            "sha256": d.sha256,
            "chunks": counts.get(d.doc_id, 0),
            "sentences": counts.get(d.doc_id, 0),
            "segment": None,
        }
        for d in segment.documents
    }
    payload = GenerationPayload(segment, documents, {}, [], SPEC, DIM, {})
    with store.lock():
        store.write(payload)
    return load_current(store.index_dir, SPEC)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalSnapshot, SegmentPayload]:
    """One segment of 3,000 chunks written with an approximate-index threshold of 1,000."""
    segment = synthetic(300, 10)
    store = LocalIndexStore(tmp_path_factory.mktemp("large"), ann=AnnConfig(min_chunks=1_000))
    return publish(store, segment), segment


def brute_force(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = vectors.astype(np.float16).astype(np.float32) @ q
    return ids[np.argsort(-scores, kind="stable")[:k]]


def test_a_segment_over_the_threshold_gets_the_approximate_index(
    large: tuple[LocalSnapshot, SegmentPayload],
) -> None:
    snap, segment = large
    seg_dir = snap.path.parent / "segments" / "seg-000001"
    vectors = json.loads((seg_dir / "manifest.json").read_text("utf-8"))["vectors"]
    assert vectors["kind"] == ann.IVF_PQ and vectors["nprobe"] >= 1
    assert vectors["shortlist"] in ann.SHORTLISTS
    exact = ann.load_mmap(seg_dir / "vectors.faiss")
    assert ann.kind_of(ann.load_mmap(seg_dir / "ann.faiss", exact)) == ann.IVF_PQ
    queries = clustered(60, seed=5)
    recall = np.mean(
        [
            len(
                np.intersect1d(
                    snap.dense(q, 10, None).ids,
                    brute_force(segment.chunk_vectors, segment.chunk_ids, q, 10),
                )
            )
            / 10
            for q in queries
        ]
    )
    assert recall >= 0.9


def test_a_segment_with_the_ivf_sq8_index_of_format_7_is_still_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments written before format 8 hold IVF over 8-bit codes and no shortlist: read
    and searched as they are, with the calibrated ``nprobe`` saved in the file."""
    import faiss

    from qa.index import segment as segment_module

    def ivf_sq8(n: int, dim: int, config: AnnConfig | None = None) -> faiss.Index:
        quantizer = faiss.IndexFlatIP(dim)
        return faiss.IndexIVFScalarQuantizer(
            quantizer, dim, ann.lists_for(n), faiss.ScalarQuantizer.QT_8bit,
            faiss.METRIC_INNER_PRODUCT,
        )  # fmt: skip

    monkeypatch.setattr(ann, "make_index", ivf_sq8)
    segment = synthetic(300, 10)
    snap = publish(LocalIndexStore(tmp_path, ann=AnnConfig(min_chunks=1_000)), segment)
    seg_dir = tmp_path / "segments" / "seg-000001"
    seg_manifest = json.loads((seg_dir / "manifest.json").read_text("utf-8"))
    assert seg_manifest["vectors"]["kind"] == ann.IVF_SQ8
    # as format 7 wrote it: no shortlist, version 7 (the generation names its new checksum)
    seg_manifest["format_version"] = 7
    del seg_manifest["vectors"]["shortlist"]
    (seg_dir / "manifest.json").write_text(json.dumps(seg_manifest), "utf-8")
    gen_manifest_path = snap.path / "manifest.json"
    gen_manifest = json.loads(gen_manifest_path.read_text("utf-8"))
    gen_manifest["segments"]["seg-000001"] = segment_module.sha256_file(seg_dir / "manifest.json")
    gen_manifest_path.write_text(json.dumps(gen_manifest), "utf-8")
    monkeypatch.undo()
    snap = load_current(tmp_path, SPEC)
    assert ann.kind_of(snap._segments[0].store.approximate) == ann.IVF_SQ8
    hits = [
        len(np.intersect1d(
            snap.dense(q, 10, None).ids,
            brute_force(segment.chunk_vectors, segment.chunk_ids, q, 10),
        )) / 10
        for q in clustered(60, seed=5)
    ]  # fmt: skip
    assert np.mean(hits) >= 0.9


def test_a_small_segment_is_searched_exactly(tmp_path: Path) -> None:
    segment = synthetic(30, 10)
    snap = publish(LocalIndexStore(tmp_path, ann=AnnConfig(min_chunks=1_000)), segment)
    seg_dir = tmp_path / "segments" / "seg-000001"
    assert (
        json.loads((seg_dir / "manifest.json").read_text("utf-8"))["vectors"]["kind"] == ann.EXACT
    )
    assert not (seg_dir / "ann.faiss").exists()
    for q in clustered(20, seed=6):
        found = snap.dense(q, 10, None)
        truth = brute_force(segment.chunk_vectors, segment.chunk_ids, q, 10)
        assert len(np.intersect1d(found.ids, truth)) >= 9  # float16 rounding may swap a tie
        rows = [list(segment.chunk_ids).index(i) for i in found.ids]
        np.testing.assert_allclose(found.scores, segment.chunk_vectors[rows] @ q, atol=2e-3)


@pytest.mark.parametrize(
    ("filters", "share"),
    [
        (Filters(path_prefix="a/"), 0.1),  # 300 rows: under the threshold, searched exactly
        (Filters(doc_ids=frozenset(f"{'abcdefghij'[d % 10]}/doc{d}.md" for d in range(150))), 0.5),
    ],
)
def test_filters_are_honoured_on_both_paths(
    large: tuple[LocalSnapshot, SegmentPayload], filters: Filters, share: float
) -> None:
    snap, segment = large
    allowed_docs = {d.doc_id for d in segment.documents if filters.allows(d.doc_id, d.path)}
    rows = np.asarray([c.doc_id in allowed_docs for c in segment.chunks])
    assert snap.count(filters) == rows.sum() == int(share * len(segment.chunks))
    hits = []
    for q in clustered(40, seed=8):
        found = snap.dense(q, 10, filters)
        assert len(found.ids) == 10
        assert {c.doc_id for c in snap.chunks(found.ids)} <= allowed_docs
        truth = brute_force(segment.chunk_vectors[rows], segment.chunk_ids[rows], q, 10)
        hits.append(len(np.intersect1d(found.ids, truth)) / 10)
    # narrow: the exact index, row bitmap (allowed rows only scored); wide: the approximate one
    assert np.mean(hits) >= (0.99 if share < 0.3 else 0.9)


def test_a_whole_search_returns_chunks_within_the_filter(
    large: tuple[LocalSnapshot, SegmentPayload],
) -> None:
    snap, _ = large
    searcher = Searcher(snap, fusion=FusionConfig(mode="hybrid"))
    hits = searcher.search("note 17 part 3", clustered(1, 9)[0], 5, Filters(path_prefix="h/"))
    assert hits and all(h.chunk.doc_id.startswith("h/") for h in hits)
    for hit in hits:
        doc = snap.document(hit.chunk.doc_id)
        assert doc is not None and doc.text[hit.chunk.start : hit.chunk.end] == hit.chunk.text
        assert hit.chunk.start <= hit.highlight[0] < hit.highlight[1] <= hit.chunk.end


def test_chunk_places_are_the_chunks_documents_and_spans(
    large: tuple[LocalSnapshot, SegmentPayload],
) -> None:
    snap, segment = large
    ids = segment.chunk_ids[np.random.default_rng(3).choice(len(segment.chunk_ids), 200)]
    labels, spans = snap.chunk_places(ids)
    chunks = snap.chunks(ids)
    assert spans.tolist() == [[c.start, c.end] for c in chunks]
    doc_ids = [c.doc_id for c in chunks]
    for i in range(len(ids)):  # one label a document, different documents differ
        assert [labels[i] == x for x in labels] == [doc_ids[i] == d for d in doc_ids]


@pytest.mark.parametrize("prefix", [None, "h/"])
def test_search_highlights_and_parts_as_read_per_hit(
    large: tuple[LocalSnapshot, SegmentPayload], prefix: str | None
) -> None:
    # search reads every candidate's vector and sentences once and highlights from them;
    # the public per-call reads must give the same highlights, chunks and cosines
    snap, _ = large
    searcher = Searcher(snap, fusion=FusionConfig(mode="hybrid"))
    filters = Filters(path_prefix=prefix) if prefix else None
    for q in range(8):
        vector = clustered(1, 40 + q)[0]
        query = f"note {q * 7} part {q % 4} text"
        hits = searcher.search(query, vector, 8, filters)
        assert hits
        again = [dataclasses.replace(h, highlight=(0, 0), highlight_dense=0.0) for h in hits]
        searcher.highlight(query, vector, again)
        assert [(h.highlight, h.highlight_dense) for h in again] == [
            (h.highlight, h.highlight_dense) for h in hits
        ]
        ids = np.asarray([h.id for h in hits], dtype=np.int64)
        assert [h.chunk for h in hits] == snap.chunks(ids)
        np.testing.assert_allclose(
            [h.dense for h in hits], searcher.dense_scores(ids, vector, 0.0), rtol=1e-6
        )


def is_mapped(array: np.ndarray) -> bool:
    """An np.memmap, or a view whose base chain ends in one (the same pages)."""
    while array is not None and not isinstance(array, np.memmap):
        array = array.base  # type: ignore[assignment]
    return isinstance(array, np.memmap) and array.filename is not None


def test_columns_vectors_and_texts_are_memory_mapped(
    large: tuple[LocalSnapshot, SegmentPayload],
) -> None:
    snap, segment = large
    (seg,) = snap._segments
    for array in (seg.store.vectors, seg.sentence_vectors, seg.ids, seg.docs, seg.spans,
                  seg.byte_spans, seg.sentence_indptr, seg.sentence_spans, seg.texts,
                  seg.sentence_scales):  # fmt: skip
        assert is_mapped(array)
    assert seg.store.vectors.dtype == np.float16
    assert seg.sentence_vectors.dtype == np.int8  # 8-bit codes, one scale a sentence
    # no (n, dim) copy of the vectors in the snapshot: only per-row columns of the generation
    held = [v for v in vars(snap).values() if isinstance(v, np.ndarray) and v.ndim == 2]
    assert not held
    np.testing.assert_allclose(
        snap.chunk_vectors(segment.chunk_ids[:50]), segment.chunk_vectors[:50], atol=1e-3
    )


def test_chunks_round_trip_with_exact_offsets_in_non_ascii_texts(
    large: tuple[LocalSnapshot, SegmentPayload],
) -> None:
    snap, segment = large
    ids = segment.chunk_ids[::37]
    chunks = snap.chunks(ids)
    expected = {int(i): c for i, c in zip(segment.chunk_ids, segment.chunks, strict=True)}
    assert chunks == [expected[int(i)] for i in ids]
    for chunk in chunks:
        doc = snap.document(chunk.doc_id)
        assert doc is not None and doc.text[chunk.start : chunk.end] == chunk.text
    sents = snap.sentences(ids)
    assert sents.owner.tolist() == list(range(len(ids)))
    assert [tuple(s) for s in sents.spans.tolist()] == [(c.start, c.end) for c in chunks]


@hsettings(max_examples=60, deadline=None)
@given(st.text(max_size=60), st.data())
def test_byte_offsets_cut_the_utf8_text_where_the_characters_are(
    text: str, data: st.DataObject
) -> None:
    encoded = text.encode("utf-8", "surrogatepass")
    a = data.draw(st.integers(0, len(text)))
    b = data.draw(st.integers(a, len(text)))
    lo, hi = byte_offsets(text, encoded, np.asarray([a, b])).tolist()
    assert encoded[lo:hi].decode("utf-8", "surrogatepass") == text[a:b]


def test_an_update_keeps_the_old_segment_and_its_index(tmp_path: Path) -> None:
    """A second generation names the first segment (not rewritten) and a new one; the
    old version of a changed document is dead: neither found nor counted."""
    store = LocalIndexStore(tmp_path, ann=AnnConfig(min_chunks=1_000))
    first = synthetic(200, 10)
    snap = publish(store, first)
    changed = synthetic(1, 4, seed=3, word="fresh")
    old = first.documents[0].doc_id
    changed.documents = [Document(old, old, "Doc 0", changed.documents[0].text)]
    changed.chunks = [
        Chunk(old, c.start, c.end, c.text, c.line_start, c.line_end, c.page, c.heading)
        for c in changed.chunks
    ]
    changed.chunk_ids = changed.chunk_ids + 10**9  # ids of other content
    documents = dict(snap.manifest["documents"])
    documents[old] = {**documents[old], "sha256": changed.documents[0].sha256, "chunks": 4,
                      "sentences": 4, "segment": None}  # fmt: skip
    payload = GenerationPayload(changed, documents, dict(snap.segment_checksums), [], SPEC, DIM, {})
    with store.lock():
        store.write(payload)
    after = load_current(tmp_path, SPEC)
    assert list(after.segment_checksums) == ["seg-000001", "seg-000002"]
    assert len(after) == 2000 - 10 + 4 and after.dead_chunks == 10
    assert after.count(Filters(doc_ids=frozenset([old]))) == 4
    found = after.dense(changed.chunk_vectors[0], 5, Filters(doc_ids=frozenset([old])))
    assert set(found.ids) <= set(changed.chunk_ids.tolist())
    texts = [c.text for c in after.chunks(after.chunk_ids) if c.doc_id == old]
    assert texts and all(t.startswith("fresh") for t in texts)


def test_an_index_of_the_previous_format_must_be_rebuilt(tmp_path: Path) -> None:
    snap = publish(LocalIndexStore(tmp_path), synthetic(3, 2))
    manifest_path = snap.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text("utf-8"))
    manifest["format_version"] = 6  # float16 sentence vectors: still read
    manifest_path.write_text(json.dumps(manifest), "utf-8")
    assert load_current(tmp_path, SPEC).count(None) == snap.count(None)
    manifest["format_version"] = 5
    manifest_path.write_text(json.dumps(manifest), "utf-8")
    with pytest.raises(IndexMismatch, match="rebuild"):
        load_current(tmp_path, SPEC)


def test_a_segment_is_hashed_once_a_process_then_checked_by_size_and_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qa.errors import IndexCorrupt
    from qa.index import segment as segment_module

    publish(LocalIndexStore(tmp_path), synthetic(20, 3))
    hashed: list[str] = []
    original = segment_module.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return original(path)

    monkeypatch.setattr(segment_module, "sha256_file", counting)
    monkeypatch.setattr(segment_module, "_VERIFIED", {})  # as a fresh process
    load_current(tmp_path, SPEC)
    assert "vectors.faiss" in hashed  # first load in this process: every file
    hashed.clear()
    load_current(tmp_path, SPEC)
    assert hashed == ["manifest.json"], "unchanged: only the segment's manifest is hashed"
    # a file replaced by one of the same size (a new inode) is hashed again, and caught
    victim = tmp_path / "segments" / "seg-000001" / "vectors.faiss"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    (victim.parent / "swap").write_bytes(bytes(data))
    (victim.parent / "swap").replace(victim)
    with pytest.raises(IndexCorrupt, match=r"vectors\.faiss"):
        load_current(tmp_path, SPEC)


def test_a_segment_held_by_a_snapshot_is_taken_as_loaded_until_it_changes(
    tmp_path: Path,
) -> None:
    import gc
    import os
    import weakref

    first = publish(LocalIndexStore(tmp_path), synthetic(20, 3))
    again = load_current(tmp_path, SPEC)
    held = first._segments[0]
    assert again._segments[0] is held  # the next load of the same segment reuses it
    assert again.chunks(again.chunk_ids[:5]) == first.chunks(first.chunk_ids[:5])
    # a file touched (same bytes, another mtime) is verified again and read again
    victim = tmp_path / "segments" / "seg-000001" / "chunk_spans.npy"
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = load_current(tmp_path, SPEC)
    assert touched._segments[0] is not held
    # weak: a segment no snapshot holds is not kept by the cache
    gone = weakref.ref(held)
    del first, again, held
    gc.collect()
    assert gone() is None


@hsettings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 64),
    st.integers(0, 2**32 - 1),
    st.floats(1e-6, 1e3),
)
def test_sentence_codes_come_back_within_half_a_step(
    rows: int, dim: int, seed: int, magnitude: float
) -> None:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    vectors *= magnitude
    vectors[0] = 0.0  # a zero row stays zero
    codes, scales = encode_sentences(vectors)
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (rows,)
    back = decode_sentences(codes, scales)
    assert not back[0].any()
    step = np.abs(vectors).max(axis=1) / 127
    assert (np.abs(back - vectors) <= step[:, None] / 2 * 1.0001 + 1e-12).all()


def test_sentence_codes_are_the_same_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """encode_sentences works in blocks of rows (bounded memory at 1M chunks); block
    boundaries change nothing, float16 input included."""
    from qa.index import segment as segment_module

    vectors = np.random.default_rng(5).normal(size=(50, 16)).astype(np.float16)
    vectors[7] = 0.0
    whole = encode_sentences(vectors)
    monkeypatch.setattr(segment_module, "_ENCODE_ROWS", 3)
    blocked = encode_sentences(vectors)
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])
    assert encode_sentences(np.zeros((0, 16), dtype=np.float32))[0].shape == (0, 16)


def test_stored_sentence_vectors_rank_as_the_originals(
    large: tuple[LocalSnapshot, SegmentPayload],
) -> None:
    """Unit sentence vectors read back from their codes (and scaled back to unit length):
    each component within a step (1/127 of the largest), and a question's cosines in the
    same order wherever they differ by more than twice the error bound."""
    snap, segment = large
    ids = segment.chunk_ids[:200]
    got = snap.sentences(ids)
    rows = np.flatnonzero(np.isin(segment.sentences[:, 0], np.arange(200)))
    want = segment.sentence_vectors[rows]
    assert got.vectors.shape == want.shape
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    step = np.abs(want).max() / 127
    assert np.abs(got.vectors - want).max() <= step
    q = want[0] / np.linalg.norm(want[0])
    a, b = got.vectors @ q, want @ q
    bound = step * np.abs(q).sum()
    i, j = np.triu_indices(len(a), 1)
    clear = np.abs(b[i] - b[j]) > 2 * bound
    assert clear.any()
    assert (np.sign(a[i] - a[j])[clear] == np.sign(b[i] - b[j])[clear]).all()
