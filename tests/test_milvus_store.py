"""The Milvus store (qa.milvus_store) against Milvus Lite: embedded (a tmp ``.db``) and its
gRPC server started as a subprocess; vectors from the deterministic fake embedder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from qa.chunker import Chunker
from qa.documents import Document
from qa.errors import IndexMismatch, IndexNotReady, InvalidRequest
from qa.milvus_store import (
    PIECE_CHARS,
    DocumentWrite,
    MilvusIndex,
    MilvusSnapshot,
    WriteReport,
    chunk_id,
    content_hash,
    filter_expr,
    prefix_expr,
    quote,
)
from tests.fakes import FakeEmbedder

DIM = 16
EMBEDDER = FakeEmbedder(dimension=DIM)
CHUNKER = Chunker(EMBEDDER.count_tokens, max_tokens=24, overlap_tokens=0)


@dataclass(frozen=True)
class F:
    doc_ids: frozenset[str] | None = None
    path_prefix: str | None = None


def write_of(doc: Document) -> DocumentWrite:
    chunked = CHUNKER.chunk(doc)
    rows = [(i, s, e) for i, sents in enumerate(chunked.sentences) for s, e in sents]
    sentence_texts = [doc.text[s:e] for _, s, e in rows]
    return DocumentWrite(
        document=doc,
        chunks=chunked.chunks,
        chunk_vectors=EMBEDDER.embed([c.embed_text for c in chunked.chunks]),
        sentences=np.asarray(rows, dtype=np.int64).reshape(-1, 3),
        sentence_vectors=EMBEDDER.embed(sentence_texts).reshape(-1, DIM),
    )


def doc(doc_id: str, text: str, title: str = "") -> Document:
    return Document(doc_id=doc_id, path=doc_id, title=title or doc_id, text=text)


NFD_NAME = unicodedata.normalize("NFD", "notes/café.md")
G1_DOCS = [
    doc(
        "notes/sourdough.md",
        "Sourdough starter is flour and water. It ferments for days.\n\n"
        "Bake the loaf at 250 degrees in a covered pot for forty minutes.",
    ),
    doc(
        "notes/b_c.md",
        "Volcanoes erupt when magma rises. Basalt is a volcanic rock.",
    ),
    doc("notes/bXc.md", "Glaciers carve valleys. Moraines mark where ice stopped."),
    doc("other/50%off.txt", "A discount coupon for tea. Green tea and oolong."),
    doc(NFD_NAME, "Espresso crema forms from emulsified oils. Baristas tamp the grounds."),
    doc("back\\slash/odd.txt", "Penguins huddle in winter storms."),
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded Milvus Lite per module (each test uses its own collection prefix)."""
    return str(tmp_path_factory.mktemp("milvus") / "store.db")


_prefixes = iter(range(10_000))


@pytest.fixture
def store(db: str) -> Iterator[MilvusIndex]:
    index = MilvusIndex(db, dimension=DIM, prefix=f"t{next(_prefixes)}")
    yield index


def first_generation(store: MilvusIndex, docs: list[Document] = G1_DOCS) -> MilvusSnapshot:
    g = store.next_generation()
    store.write_generation(g, [write_of(d) for d in docs], stats={"documents": len(docs)})
    store.publish(g)
    return store.snapshot()


def ids_of(snapshot: MilvusSnapshot, doc_id: str) -> list[int]:
    document = snapshot.document(doc_id)
    assert document is not None
    return [
        chunk_id(document.doc_id, document.sha256, c.start, c.end)
        for c in CHUNKER.chunk(document).chunks
    ]


# --------------------------------------------------------------------------- pure functions


def test_expressions_escape_quotes_and_wildcards() -> None:
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert prefix_expr("path_key", "notes/") == 'path_key like "notes/%"'
    # a LIKE metacharacter in the prefix: an exact range instead of an ambiguous pattern
    assert prefix_expr("path_key", "a_b") == ('(path_key >= "a_b" and path_key < "a_b\U0010ffff")')
    assert filter_expr(3, F(doc_ids=frozenset())) is None
    expr = filter_expr(3, F(doc_ids=frozenset({'x"y'}), path_prefix="p"))
    assert expr == (
        '(gen_from <= 3 and (gen_to == 0 or gen_to > 3)) and doc_key in ["x\\"y"] '
        'and path_key like "p%"'
    )


# --------------------------------------------------------------------------- one generation


def test_first_generation_dense_lexical_and_reads(store: MilvusIndex) -> None:
    snap = first_generation(store)
    assert snap.generation == 1 and store.current() == 1
    assert snap.stats == {"documents": len(G1_DOCS)}
    sour = snap.document("notes/sourdough.md")
    assert sour is not None and sour.text == G1_DOCS[0].text
    ids = ids_of(snap, "notes/sourdough.md")
    rows = snap.chunks(np.asarray(ids))
    assert [(r.start, r.end) for r in rows] == [
        (c.start, c.end) for c in CHUNKER.chunk(sour).chunks
    ]
    for r in rows:  # the invariant: the chunk text is the document's span
        assert sour.text[r.start : r.end] == r.text
        assert r.doc_id == "notes/sourdough.md"
    vectors = snap.chunk_vectors(ids)
    assert vectors.shape == (len(ids), DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, write_of(sour).chunk_vectors, atol=1e-6)

    found, cos = snap.dense(vectors[1], 3, None)
    assert found[0] == ids[1] and cos[0] == pytest.approx(1.0, abs=1e-5)
    assert list(cos) == sorted(cos, reverse=True) and found.dtype == np.int64

    hit_ids, bm25 = snap.lexical("bake loaf covered pot", 5, None)
    assert hit_ids[0] == ids[1] and bm25[0] > 0 and np.all(bm25 > 0)
    assert list(bm25) == sorted(bm25, reverse=True)
    # stems: "baking"/"loaves" do not appear but their stems do (qa's tokens)
    assert snap.lexical("baking loaves", 5, None)[0][0] == ids[1]
    assert len(snap.lexical("zeppelin", 5, None)[0]) == 0

    scores = snap.lexical_scores("bake loaf", np.asarray([ids[0], ids[1], ids[1]]))
    assert scores[0] == 0 and scores[1] > 0 and scores[1] == scores[2]
    # the same BM25 as a search: statistics of the whole collection, not of the filter
    two_terms, two_scores = snap.lexical("bake loaf", 1, None)
    assert two_terms[0] == ids[1] and scores[1] == pytest.approx(two_scores[0], rel=1e-5)

    owner, spans, svec = snap.sentences(np.asarray(ids))
    assert len(owner) >= 2 and spans.shape == (len(owner), 2) and svec.shape == (len(owner), DIM)
    assert list(owner) == sorted(owner)
    for o, (s, e) in zip(owner, spans, strict=True):
        assert rows[o].start <= s < e <= rows[o].end

    summaries = snap.documents()
    assert [d.doc_id for d in summaries] == sorted(d.doc_id for d in G1_DOCS)
    assert all(d.chunks >= 1 for d in summaries)
    assert len(snap) == snap.count(None) == sum(d.chunks for d in summaries)
    assert snap.count(F(path_prefix="notes/")) == sum(
        d.chunks for d in summaries if d.path.startswith("notes/")
    )
    info = snap.document_info("notes/sourdough.md")
    assert info is not None and info.chunks == len(ids) and info.sha256 == sour.sha256
    with pytest.raises(KeyError):
        snap.chunks(np.asarray([12345]))


def test_filters_are_pushed_down(store: MilvusIndex) -> None:
    snap = first_generation(store)
    query = EMBEDDER.embed(["volcanic rock glaciers tea espresso penguins"])[0]

    def dense_docs(filters: F | None) -> set[str]:
        ids, _ = snap.dense(query, 50, filters)
        return {r.doc_id for r in snap.chunks(ids)}

    def lexical_docs(q: str, filters: F | None) -> set[str]:
        ids, _ = snap.lexical(q, 50, filters)
        return {r.doc_id for r in snap.chunks(ids)}

    everything = {d.doc_id for d in G1_DOCS}
    assert dense_docs(None) == everything
    assert dense_docs(F(path_prefix="notes/")) == {
        "notes/sourdough.md",
        "notes/b_c.md",
        "notes/bXc.md",
        NFD_NAME,
    }
    # "_" and "%" are literal characters of the prefix, not wildcards
    assert dense_docs(F(path_prefix="notes/b_")) == {"notes/b_c.md"}
    assert dense_docs(F(path_prefix="other/50%")) == {"other/50%off.txt"}
    assert dense_docs(F(path_prefix="back\\")) == {"back\\slash/odd.txt"}
    assert dense_docs(F(path_prefix="nowhere/")) == set()
    # ids and prefixes compare in NFC, whatever form the document was named in
    nfc_name = unicodedata.normalize("NFC", NFD_NAME)
    assert dense_docs(F(doc_ids=frozenset({nfc_name}))) == {NFD_NAME}
    assert dense_docs(F(path_prefix=unicodedata.normalize("NFC", "notes/caf"))) == {NFD_NAME}
    assert dense_docs(F(doc_ids=frozenset({"notes/b_c.md", "other/50%off.txt"}))) == {
        "notes/b_c.md",
        "other/50%off.txt",
    }
    assert dense_docs(F(doc_ids=frozenset())) == set()
    both = F(doc_ids=frozenset({"notes/b_c.md", "other/50%off.txt"}), path_prefix="notes/")
    assert dense_docs(both) == {"notes/b_c.md"}

    assert lexical_docs("tea volcanic", None) == {"other/50%off.txt", "notes/b_c.md"}
    assert lexical_docs("tea volcanic", F(path_prefix="notes/b_")) == {"notes/b_c.md"}
    assert lexical_docs("tea volcanic", F(doc_ids=frozenset({"other/50%off.txt"}))) == {
        "other/50%off.txt"
    }
    assert lexical_docs("espresso", F(path_prefix="other/")) == set()


def test_long_documents_are_stored_in_pieces(store: MilvusIndex) -> None:
    text = ("Ünïcödé pieces. " * (PIECE_CHARS // 8)) + "Last sentence here."
    assert len(text) > 2 * PIECE_CHARS
    snap = first_generation(store, [doc("long.txt", text)])
    got = snap.document("long.txt")
    assert got is not None and got.text == text


def test_bad_writes_are_refused(store: MilvusIndex, db: str) -> None:
    first_generation(store, G1_DOCS[:1])
    with pytest.raises(InvalidRequest, match="not above"):
        store.write_generation(1, [])
    w = write_of(G1_DOCS[1])
    bad = DocumentWrite(
        w.document, w.chunks, w.chunk_vectors[:, :3], w.sentences, w.sentence_vectors
    )
    with pytest.raises(InvalidRequest, match="shape"):
        store.write_generation(store.next_generation(), [bad])
    with pytest.raises(InvalidRequest, match="both added and removed"):
        store.write_generation(store.next_generation(), [w], removed=[w.document.doc_id])
    with pytest.raises(IndexMismatch):
        MilvusIndex(db, dimension=DIM + 1, prefix=store.prefix).ensure_collections()
    with pytest.raises(IndexNotReady):
        MilvusIndex(db, dimension=DIM, prefix="never_written").snapshot()


# --------------------------------------------------------------------------- generations


def second_generation(store: MilvusIndex) -> tuple[int, WriteReport]:
    """G2: add one, change one, delete one, rename one (same text, new id and path)."""
    changed = doc(
        "notes/sourdough.md",
        "Sourdough starter is flour and water. It ferments for days.\n\n"
        "Rye bread wants a longer proof and a cooler oven.",
    )
    renamed = doc("notes/rocks.md", G1_DOCS[1].text)  # was notes/b_c.md
    added = doc("new/comets.md", "Comets grow tails near the sun. The tail points away.")
    g = store.next_generation()
    report = store.write_generation(
        g,
        [write_of(changed), write_of(renamed), write_of(added)],
        removed=["notes/bXc.md", "notes/b_c.md", "not/there.md"],
    )
    return g, report


def test_update_writes_only_what_changed_and_keeps_the_old_generation(
    store: MilvusIndex,
) -> None:
    g1 = first_generation(store)
    old_sour = ids_of(g1, "notes/sourdough.md")
    old_rocks = ids_of(g1, "notes/b_c.md")
    old_glacier = ids_of(g1, "notes/bXc.md")
    unchanged = ids_of(g1, "other/50%off.txt")
    chunk_total_before = len(
        store._query(store.chunks_name, "gen_from >= 0", ["pk"])  # every stored row
    )

    g, report = second_generation(store)
    assert g == 2
    assert report.documents_written == 3
    assert report.documents_closed == 3  # sourdough (changed), b_c.md (renamed), bXc.md
    assert report.unknown_removed == ["not/there.md"]
    # nothing of the unchanged documents is written again
    stored = store._query(store.chunks_name, "gen_from >= 0", ["pk", "chunk_id", "gen_from"])
    new_rows = [r for r in stored if r["gen_from"] == 2]
    assert len(new_rows) == report.chunks_written
    assert not {r["chunk_id"] for r in new_rows} & set(unchanged)
    assert len(stored) == chunk_total_before + report.chunks_written
    comets = write_of(doc("new/comets.md", "Comets grow tails near the sun. The tail points away."))
    sour2 = write_of(
        doc(
            "notes/sourdough.md",
            "Sourdough starter is flour and water. It ferments for days.\n\n"
            "Rye bread wants a longer proof and a cooler oven.",
        )
    )
    rocks = write_of(doc("notes/rocks.md", G1_DOCS[1].text))
    assert report.sentences_written == len(comets.sentences) + len(sour2.sentences) + len(
        rocks.sentences
    )

    # generation 1 is not in service yet: readers still see it all
    assert store.current() == 1
    assert g1.document("notes/bXc.md") is not None
    store.publish(2)
    g2 = store.snapshot()
    assert g2.generation == 2 and store.current() == 2
    assert g2.document("notes/bXc.md") is None and g2.document("notes/b_c.md") is None
    assert g2.document("notes/rocks.md") is not None
    new_rocks = ids_of(g2, "notes/rocks.md")  # ids name the document: new ones
    assert not set(new_rocks) & set(old_rocks)
    assert [r.doc_id for r in g2.chunks(np.asarray(new_rocks))] == ["notes/rocks.md"] * len(
        new_rocks
    )
    with pytest.raises(KeyError):
        g2.chunks(np.asarray(old_rocks))
    assert len(g2.sentences(np.asarray(new_rocks)).owner) > 0
    with pytest.raises(KeyError):
        g2.chunks(old_glacier)
    gone_sour = [i for i in old_sour if i not in ids_of(g2, "notes/sourdough.md")]
    assert gone_sour
    with pytest.raises(KeyError):
        g2.chunks(gone_sour)
    assert len(g2.sentences(np.asarray(gone_sour))[0]) == 0
    assert g2.chunks(unchanged)[0].doc_id == "other/50%off.txt"
    assert len(g2.lexical("glaciers moraines", 5, None)[0]) == 0
    assert len(g2.lexical("comets tail", 5, None)[0]) > 0
    assert {r.doc_id for r in g2.chunks(g2.lexical("volcanic basalt", 5, None)[0])} == {
        "notes/rocks.md"
    }
    # a request that began on generation 1 still reads generation 1
    assert g1.chunks(old_glacier)[0].doc_id == "notes/bXc.md"
    assert len(g1.lexical("glaciers moraines", 5, None)[0]) > 0
    assert len(g1.lexical("comets tail", 5, None)[0]) == 0
    assert {r.doc_id for r in g1.chunks(g1.lexical("volcanic basalt", 5, None)[0])} == {
        "notes/b_c.md"
    }
    assert len(g1.sentences(np.asarray(gone_sour))[0]) > 0
    # vectors known by content hash: reusable by the next update
    assert store.vectors_by_content_hash(["nope"]) == {}
    h = content_hash(comets.chunks[0].embed_text)
    np.testing.assert_allclose(
        store.vectors_by_content_hash([h])[h], comets.chunk_vectors[0], atol=1e-6
    )


def test_rollback_then_orphans_are_cleaned(store: MilvusIndex) -> None:
    first_generation(store)
    rows_g1 = len(store._query(store.chunks_name, "gen_from >= 0", ["pk"]))
    second_generation(store)
    store.publish(2)
    assert store.rollback() == 1
    assert store.current() == 1
    g = store.snapshot()
    assert g.generation == 1 and g.document("notes/bXc.md") is not None
    assert g.document("new/comets.md") is None
    with pytest.raises(IndexNotReady):
        store.rollback()  # nothing older than generation 1
    # the next write removes generation 2's rows, reopens what it closed, and never
    # reuses its number
    assert store.next_generation() == 3
    report = store.write_generation(3, [write_of(doc("new/moon.md", "The moon has phases."))])
    assert report.orphans_removed > 0
    assert 2 not in store.generations()
    stored = store._query(store.chunks_name, "gen_from >= 0", ["gen_from", "gen_to"])
    assert not [r for r in stored if r["gen_from"] == 2 or r["gen_to"] == 2]
    assert len(stored) == rows_g1 + report.chunks_written
    store.publish(3)
    g3 = store.snapshot()
    assert g3.document("new/moon.md") is not None and g3.document("notes/bXc.md") is not None
    assert g3.document("new/comets.md") is None


def test_a_crashed_write_is_never_served_and_is_cleaned(store: MilvusIndex) -> None:
    first_generation(store)
    # a write that never reached publish (the process died after writing)
    store.write_generation(2, [write_of(doc("new/ghost.md", "Ghost rows nobody sees."))])
    assert store.current() == 1
    snap = store.snapshot()
    assert snap.document("new/ghost.md") is None
    assert len(snap.lexical("ghost", 5, None)[0]) == 0
    report = store.write_generation(3, [], removed=["notes/bXc.md"])
    assert report.orphans_removed > 0 and report.documents_closed == 1
    assert not store._query(store.chunks_name, "gen_from == 2", ["pk"])


def test_prune_drops_rows_no_kept_generation_sees(store: MilvusIndex) -> None:
    first_generation(store)
    second_generation(store)
    store.publish(2)
    closed = store._query(store.chunks_name, "gen_to == 2", ["pk"])
    assert closed
    assert store.prune(keep=2) == 0
    assert store.prune(keep=1) > 0
    assert not store._query(store.chunks_name, "gen_to == 2", ["pk"])
    assert store.snapshot().document("notes/rocks.md") is not None


def test_a_second_client_sees_the_pointer_switch(store: MilvusIndex, db: str) -> None:
    reader = MilvusIndex(db, dimension=DIM, prefix=store.prefix)
    assert reader.current() == 0
    first_generation(store)
    assert reader.current() == 1
    second_generation(store)
    assert reader.current() == 1  # written, not published
    store.publish(2)
    assert reader.current() == 2
    assert reader.snapshot().document("new/comets.md") is not None


# --------------------------------------------------------------------------- gRPC server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def lite_server(tmp_path: Path) -> Iterator[str]:
    """``milvus-lite server`` in a subprocess; ready when its port accepts connections."""
    port = _free_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    proc = subprocess.Popen(
        [
            str(exe),
            "server",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"milvus-lite server exited with {proc.returncode}: {out}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("milvus-lite server did not open its port within 60 s")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_two_clients_share_one_lite_grpc_server(lite_server: str) -> None:
    writer = MilvusIndex(lite_server, dimension=DIM, prefix="shared")
    readers = [MilvusIndex(lite_server, dimension=DIM, prefix="shared") for _ in range(2)]
    first_generation(writer)
    for reader in readers:
        snap = reader.snapshot()
        assert snap.generation == 1
        ids, _ = snap.lexical("glaciers", 3, None)
        assert snap.chunks(ids[:1])[0].doc_id == "notes/bXc.md"
    g, _ = second_generation(writer)
    writer.publish(g)
    for reader in readers:
        assert reader.current() == 2
        snap = reader.snapshot()
        assert snap.document("notes/bXc.md") is None
        ids, _ = snap.lexical("comets", 3, F(path_prefix="new/"))
        assert snap.chunks(ids[:1])[0].doc_id == "new/comets.md"


_KILLED_WRITER = """
import sys, time
import numpy as np
from qa.milvus_store import MilvusIndex
from tests.test_milvus_store import DIM, doc, write_of, second_generation

store = MilvusIndex(sys.argv[1], dimension=DIM, prefix="killed")
insert = store._insert

def pausing_insert(collection, rows, batch=500):
    insert(collection, rows, batch)
    if collection == store.chunks_name:
        print("paused", flush=True)  # rows of generation 2 are in Milvus, not published
        time.sleep(3600)

store._insert = pausing_insert
second_generation(store)
"""


def test_sigkill_during_an_update_leaves_the_last_good_generation(lite_server: str) -> None:
    store = MilvusIndex(lite_server, dimension=DIM, prefix="killed")
    first_generation(store)
    before = sorted(d.doc_id for d in store.snapshot().documents())
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, lite_server],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "paused"
        assert store._query(store.chunks_name, "gen_from == 2", ["pk"])  # half written
        assert store._query(store.chunks_name, "gen_to == 2", ["pk"])  # closed rows too
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert store.current() == 1
    snap = store.snapshot()
    assert sorted(d.doc_id for d in snap.documents()) == before
    assert snap.document("new/comets.md") is None
    assert {r.doc_id for r in snap.chunks(snap.lexical("glaciers", 3, None)[0])} == {"notes/bXc.md"}
    g, report = second_generation(store)
    assert g == 3 and report.orphans_removed > 0
    store.publish(g)
    assert store.snapshot().document("new/comets.md") is not None
    assert not store._query(store.chunks_name, "gen_from == 2 or gen_to == 2", ["pk"])


def test_update_from_documents_embeds_only_new_texts(store: MilvusIndex) -> None:
    embedder = FakeEmbedder(dimension=DIM)
    chunker = Chunker(embedder.count_tokens, max_tokens=24, overlap_tokens=0)
    corpus = list(G1_DOCS)
    first = store.update_from_documents(corpus, chunker, embedder, stats={"n": 1})
    assert first is not None and first.generation == 1 and first.reused == 0
    assert sorted(first.added) == sorted(d.doc_id for d in corpus)
    assert store.update_from_documents(corpus, chunker, embedder) is None  # nothing changed

    embedder.texts_embedded = 0
    edited = doc(
        "notes/sourdough.md",
        G1_DOCS[0].text + "\n\nA brand new closing paragraph about rye.",
    )
    corpus = [edited, doc("notes/renamed.md", G1_DOCS[2].text), *G1_DOCS[3:]]
    second = store.update_from_documents(corpus, chunker, embedder, keep=2)
    assert second is not None and second.generation == 2 and store.current() == 2
    assert second.changed == ["notes/sourdough.md"]
    assert second.added == ["notes/renamed.md"]
    assert second.removed == sorted(["notes/b_c.md", "notes/bXc.md"])
    # only the new paragraph's chunk and sentence were embedded; the rest was reused
    assert second.embedded == embedder.texts_embedded == 2
    assert second.reused > 0
    snap = store.snapshot()
    got = snap.document("notes/sourdough.md")
    assert got is not None and got.text == edited.text
    ids, _ = snap.lexical("rye closing paragraph", 3, None)
    row = snap.chunks(ids[:1])[0]
    assert row.doc_id == "notes/sourdough.md" and got.text[row.start : row.end] == row.text
    _, spans, vectors = snap.sentences(ids[:1])
    np.testing.assert_allclose(
        vectors, embedder.embed([got.text[s:e] for s, e in spans]), atol=1e-6
    )


def test_settings_name_the_store(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from qa.milvus_store import milvus_index_from_settings
    from qa.settings import Settings

    s = Settings(vector_store="milvus", index_dir=tmp_path / "index", milvus_prefix="corpus_a")
    assert s.milvus_uri_resolved == str(tmp_path / "index" / "milvus.db")
    store = milvus_index_from_settings(s, DIM)
    assert store.prefix == "corpus_a" and store.uri.endswith("milvus.db")
    assert Settings().vector_store == "faiss"
    with pytest.raises(ValidationError, match="QA_MILVUS_PREFIX"):
        Settings(milvus_prefix="bad-name")


# --------------------------------------------------------------------------- through the engine


def _milvus_settings(settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    return settings.model_copy(
        update={
            "vector_store": "milvus",
            "milvus_uri": str(tmp_path / "engine.db"),
            "milvus_prefix": "engine",
        }
    )


def test_the_engine_answers_from_milvus_as_from_the_local_store(
    settings, engine, fake_embedder, corpus_dir: Path, tmp_path: Path
) -> None:
    """The default article's questions (eval/nato) get the same top 3 passages from both
    stores (fake embedder); the citation offsets point into the document text."""
    import json as _json

    from qa.assemble import spec_from_settings, store_from_settings
    from qa.builder import build_index
    from qa.engine import Engine
    from qa.milvus_store import MilvusStore

    ms = _milvus_settings(settings, tmp_path)
    store = store_from_settings(ms)
    assert isinstance(store, MilvusStore)
    report = build_index(corpus_dir, store, fake_embedder, spec_from_settings(ms))
    assert report.generation == 1 and report.chunks == len(engine.data)
    milvus = Engine(ms, embedder=fake_embedder)
    milvus.load()
    assert milvus.data.key == "1" and len(milvus.data) == len(engine.data)
    root = Path(__file__).resolve().parent.parent
    questions = [
        _json.loads(line)["question"]
        for line in (root / "eval" / "nato" / "questions.jsonl").read_text().splitlines()
        if line.strip()
    ]
    compared = 0
    for question in questions:
        local = engine.ask(question, top_k=3)
        compared += len(local.passages)
        remote = milvus.ask(question, top_k=3)
        key = [(p.citation.doc_id, p.citation.start, p.citation.end) for p in local.passages]
        assert [
            (p.citation.doc_id, p.citation.start, p.citation.end) for p in remote.passages
        ] == key, question
        for p in remote.passages:
            doc = milvus.data.document(p.citation.doc_id)
            assert doc is not None and doc.text[p.citation.start : p.citation.end] == p.text
        # the local store keeps vectors as float16 (index format 6), Milvus as float32
        np.testing.assert_allclose(
            [p.score for p in remote.passages], [p.score for p in local.passages], atol=1e-3
        )
        assert [p.highlight for p in remote.passages] == [p.highlight for p in local.passages]
    assert compared == 3 * len(questions) == 72


def test_an_update_through_the_builder_reaches_a_second_engine(
    settings, fake_embedder, corpus_dir: Path, tmp_path: Path
) -> None:
    from qa.assemble import spec_from_settings, store_from_settings
    from qa.builder import build_index
    from qa.engine import Engine

    ms = _milvus_settings(settings, tmp_path)
    spec = spec_from_settings(ms)
    build_index(corpus_dir, store_from_settings(ms), fake_embedder, spec)
    server_a, server_b = Engine(ms, embedder=fake_embedder), Engine(ms, embedder=fake_embedder)
    server_a.load()
    server_b.load()
    assert not server_b.reload_if_changed()
    # generation 2 adds a note (the rest is kept where it is)
    note = corpus_dir / "notes" / "kiln.md"
    note.write_text("# Kilns\n\nA pottery kiln fires clay at 1200 degrees.\n", encoding="utf-8")
    fake_embedder.texts_embedded = 0
    report = build_index(
        corpus_dir, store_from_settings(ms), fake_embedder, spec, skip_if_unchanged=True
    )
    assert report.generation == 2 and report.added == ["notes/kiln.md"]
    assert fake_embedder.texts_embedded <= 3  # the new note only (chunk and sentence texts)
    pinned = server_b.data  # a request in flight keeps generation 1
    assert server_b.reload_if_changed() and server_b.data.key == "2"
    answer = server_b.ask("At what temperature does a kiln fire clay?", top_k=1)
    assert answer.passages[0].citation.doc_id == "notes/kiln.md"
    assert pinned.document("notes/kiln.md") is None
    # nothing changed: nothing written
    again = build_index(
        corpus_dir, store_from_settings(ms), fake_embedder, spec, skip_if_unchanged=True
    )
    assert again.up_to_date and again.generation == 2
    # generation 3 removes a note
    (corpus_dir / "notes" / "baking.md").unlink()
    report = build_index(corpus_dir, store_from_settings(ms), fake_embedder, spec)
    assert report.generation == 3 and report.removed == ["notes/baking.md"]
    assert server_b.reload_if_changed() and server_b.data.document("notes/baking.md") is None
    assert server_b.data.document("notes/kiln.md") is not None
    store = store_from_settings(ms)
    store.rollback(spec)
    assert server_a.reload_if_changed() and server_a.data.key == "2"
    assert server_a.data.document("notes/baking.md") is not None


def test_a_long_list_of_skipped_files_is_cut_to_fit_the_record(store: MilvusIndex) -> None:
    skipped = [{"path": f"broken/{i:05d}.pdf", "reason": "not a PDF " * 5} for i in range(3000)]
    g = store.next_generation()
    store.write_generation(g, [write_of(G1_DOCS[0])], info={"skipped": skipped})
    record = store.generations()[g]
    assert 0 < len(record["skipped"]) < len(skipped)
    assert record["skipped_left_out"] == len(skipped) - len(record["skipped"])
    assert record["skipped"] == skipped[: len(record["skipped"])]


def test_an_update_opens_only_the_files_whose_stamp_changed(
    settings, fake_embedder, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generation record keeps the corpus file stamps (in pieces), as the local
    manifest does: an update with Milvus reads the changed file only."""
    import os
    import time

    import qa.extraction
    from qa.assemble import spec_from_settings, store_from_settings
    from qa.builder import build_index
    from qa.milvus_store import MilvusStore
    from tests.test_stamps import SpyExtractor

    past = time.time() - 60  # stamps older than the scan are trusted
    for p in corpus_dir.rglob("*"):
        os.utime(p, (past, past))
    ms = _milvus_settings(settings, tmp_path)
    spec = spec_from_settings(ms)
    store = store_from_settings(ms)
    assert isinstance(store, MilvusStore)
    first = build_index(corpus_dir, store, fake_embedder, spec)
    sources = store.index().sources(first.generation)
    files = sorted(str(p.relative_to(corpus_dir)) for p in corpus_dir.rglob("*") if p.is_file())
    assert sorted(sources) == files and len(files) >= 2
    note = corpus_dir / "notes" / "kiln.md"
    note.write_text("# Kilns\n\nA pottery kiln fires clay at 1200 degrees.\n", encoding="utf-8")
    spy = SpyExtractor()
    monkeypatch.setattr(qa.extraction, "shared_extractor", lambda: spy)
    report = build_index(corpus_dir, store, fake_embedder, spec, skip_if_unchanged=True)
    assert spy.read == ["notes/kiln.md"]
    assert report.added == ["notes/kiln.md"] and report.documents == first.documents + 1
    snapshot = store.load(spec)
    assert set(snapshot.manifest["sources"]) == set(files) | {"notes/kiln.md"}
    # pruned generations take their stamps with them
    for _ in range(3):
        note.write_text(note.read_text() + " More.", encoding="utf-8")
        build_index(corpus_dir, store, fake_embedder, spec, skip_if_unchanged=True)
    assert store.index().sources(first.generation) == {}
    assert first.generation not in store.index().generations()  # nor its record


def test_exact_identifiers_score_as_the_local_store(tmp_path: Path) -> None:
    """Chunks holding a question's identifiers, and their rarity scores, are the same from
    Milvus as from the local index, with and without a filter, asked twice (the second
    time from the snapshot's cached identifier frequencies)."""
    from qa.builder import build_index
    from qa.index import IndexSpec, load_current
    from qa.index.snapshot import Filters
    from qa.milvus_store import MilvusStore
    from tests.fakes import FakeEmbedder

    corpus = tmp_path / "corpus"
    for folder in ("eu", "us"):
        (corpus / folder).mkdir(parents=True)
    for i in range(24):
        code = f"INV-{1000 + i % 5}"  # each code held by documents in both folders
        host = f"10.0.{i % 3}.{i}"
        (corpus / ("eu" if i % 2 else "us") / f"ticket-{i}.md").write_text(
            f"# Ticket {i}\n\nInvoice {code} was paid from host {host} on 2024-05-{i + 1:02d}.\n"
        )
    spec = IndexSpec("fake-embedder", 192, 32)
    build_index(corpus, tmp_path / "local", FakeEmbedder(), spec)
    local = load_current(tmp_path / "local", spec)
    store = MilvusStore(str(tmp_path / "exact.db"), prefix="exact")
    build_index(corpus, store, FakeEmbedder(), spec)
    milvus = store.load(spec)
    questions = ("which invoice is INV-1003", "host 10.0.1.7 and INV-1001", "paid on 10.0.2.11")
    for question in questions:
        eu = Filters(path_prefix="eu/")
        for filters in (eu, None, eu):  # filtered first, before the frequencies are cached
            want, got = local.exact(question, filters), milvus.exact(question, filters)
            assert len(want.ids) > 0, question
            pairs = sorted(zip(got.ids.tolist(), got.scores.round(5).tolist(), strict=True))
            wanted = sorted(zip(want.ids.tolist(), want.scores.round(5).tolist(), strict=True))
            assert pairs == wanted, (question, filters)


def test_freshness_of_a_milvus_index(
    settings, fake_embedder, corpus_dir: Path, tmp_path: Path
) -> None:
    """`qa index status` and `qa serve`'s check read the generation in Milvus, not a local
    folder: missing, fresh, stale after a change, mismatch for another model."""
    from qa.assemble import spec_from_settings, store_from_settings
    from qa.builder import build_index, index_freshness, index_state

    ms = _milvus_settings(settings, tmp_path)
    spec = spec_from_settings(ms)
    store = store_from_settings(ms)
    assert index_freshness(corpus_dir, store, spec)[0] == "missing"
    build_index(corpus_dir, store, fake_embedder, spec)
    state, why, manifest = index_state(corpus_dir, store, spec)
    assert state == "fresh", why
    assert manifest is not None and manifest["store"]["kind"] == "milvus"
    assert manifest["counts"]["documents"] == 2
    (corpus_dir / "notes" / "baking.md").unlink()
    state, why = index_freshness(corpus_dir, store, spec)
    assert state == "stale" and "1 removed" in why
    other = spec_from_settings(ms.model_copy(update={"embedding_model": "x"}))
    assert index_freshness(corpus_dir, store, other)[0] == "mismatch"


_WRITER = """
import sys
from qa.milvus_store import MilvusIndex
from tests.test_milvus_store import DIM, first_generation

snapshot = first_generation(MilvusIndex(sys.argv[1], dimension=DIM, prefix="reopened"))
print(1, len(snapshot), sorted(d.doc_id for d in snapshot.documents())[0])
"""
_READER = """
import sys
from qa.milvus_store import MilvusIndex
from tests.test_milvus_store import DIM

store = MilvusIndex(sys.argv[1], dimension=DIM, prefix="reopened")
snapshot = store.snapshot()
print(store.current(), len(snapshot), sorted(d.doc_id for d in snapshot.documents())[0])
"""


def test_a_new_process_reads_an_embedded_database_another_one_wrote(tmp_path: Path) -> None:
    """`qa index build` then `qa serve` (or `qa ask`): the second process opens the
    embedded .db, whose collections Milvus Lite reopens released, and reads it."""
    db = str(tmp_path / "reopened.db")
    root = Path(__file__).resolve().parent.parent
    outputs = []
    for script in (_WRITER, _READER):  # one process after the other, as the CLI runs
        out = subprocess.run(
            [sys.executable, "-c", script, db],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        outputs.append(out.stdout.strip().splitlines()[-1])
    assert outputs[1] == outputs[0] and outputs[0].startswith("1 ")


def test_serve_refuses_workers_on_an_embedded_database(tmp_path: Path) -> None:
    """Several processes cannot open one embedded .db: `qa serve --workers 2` says so and
    what to run instead, before building or binding anything."""
    from typer.testing import CliRunner

    from qa.cli import app

    env = {
        "QA_VECTOR_STORE": "milvus",
        "QA_INDEX_DIR": str(tmp_path / "index"),
        "QA_CORPUS_DIR": str(tmp_path / "missing"),
    }
    out = CliRunner().invoke(app, ["serve", "--workers", "2"], env=env)
    assert out.exit_code == 1
    text = " ".join(out.output.split())
    assert "admits one process" in text and "milvus-lite server" in text
    assert not (tmp_path / "index").exists()


def test_many_unreadable_files_do_not_make_the_index_stale(
    settings, fake_embedder, corpus_dir: Path, tmp_path: Path
) -> None:
    """The generation record holds 64 KB; the whole skip list is kept beside it, so an
    unchanged corpus with hundreds of unreadable files is fresh and is not rebuilt."""
    from qa.assemble import spec_from_settings, store_from_settings
    from qa.builder import build_index, index_state

    broken = corpus_dir / "broken"
    broken.mkdir()
    for i in range(600):
        (broken / f"an-unreadable-attachment-with-a-long-name-{i:04d}.txt").write_bytes(b"\0x")
    ms = _milvus_settings(settings, tmp_path)
    spec = spec_from_settings(ms)
    store = store_from_settings(ms)
    first = build_index(corpus_dir, store, fake_embedder, spec)
    assert len(first.skipped) == 600
    snapshot = store.load(spec)
    assert len(snapshot.record["skipped"]) < 600  # the record itself was cut to fit
    state, why, manifest = index_state(corpus_dir, store, spec)
    assert state == "fresh", why
    assert manifest is not None and manifest["counts"]["skipped"] == 600
    again = build_index(corpus_dir, store, fake_embedder, spec, skip_if_unchanged=True)
    assert again.up_to_date and again.generation == first.generation
