"""The corpus is a boundary: symlinks out of it, broken and looping links, special files,
and an index built before the boundary existed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient
from mcp import Client

from qa.assemble import spec_from_settings
from qa.builder import build_index, index_freshness
from qa.corpus_files import OUTSIDE, discover
from qa.engine import Engine
from qa.extraction import CorpusLimits
from qa.http import create_app
from qa.loaders import SUFFIXES, LoadReport, load_corpus
from qa.mcp_server import build_mcp_server, document_uri
from qa.settings import Settings
from tests.fakes import FakeEmbedder

SECRET = "The launch code is 0000. Nobody outside may read this."


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the corpus, with a secret file and a secret sub-folder."""
    out = tmp_path / "outside"
    (out / "folder").mkdir(parents=True)
    (out / "secret.md").write_text(f"# Secret\n\n{SECRET}\n", "utf-8")
    (out / "folder" / "more.md").write_text(f"# More\n\n{SECRET}\n", "utf-8")
    return out


@pytest.fixture
def linked_corpus(corpus_dir: Path, outside: Path) -> Path:
    """The default test corpus plus every kind of link."""
    c = corpus_dir
    os.symlink(outside / "secret.md", c / "secret.md")  # file out, absolute
    os.symlink("../outside/secret.md", c / "relative-secret.md")  # file out, relative
    os.symlink(outside / "folder", c / "linked-folder")  # folder out
    os.symlink("/etc/passwd", c / "passwd.txt")
    os.symlink("/proc/self/status", c / "status.txt")
    os.symlink("missing.md", c / "broken.md")  # broken
    os.symlink("loop-b.md", c / "loop-a.md")  # loop a → b → a
    os.symlink("loop-a.md", c / "loop-b.md")
    os.symlink("..", c / "notes" / "up")  # folder loop: links to its own parent
    (c / ".hidden").mkdir()
    (c / ".hidden" / "kept.md").write_text("# Kept\n\nA note kept in a hidden folder.\n", "utf-8")
    os.symlink("notes/baking.md", c / "baking-link.md")  # file in
    os.symlink(".hidden", c / "shown")  # folder in (to a folder the walk would not see)
    os.symlink("notes", c / "notes-again")  # folder in, already in the corpus
    return c


def reasons(report: LoadReport) -> dict[str, str]:
    return {s.path: s.reason for s in report.skipped}


def test_links_out_of_the_corpus_are_skipped_and_reported(linked_corpus: Path) -> None:
    report = load_corpus(linked_corpus, CorpusLimits())
    why = reasons(report)
    for rel in ["secret.md", "relative-secret.md", "linked-folder", "passwd.txt", "status.txt"]:
        assert why[rel] == OUTSIDE
    assert "QA_FOLLOW_EXTERNAL_SYMLINKS" in OUTSIDE
    assert not any(SECRET in d.text or "root:" in d.text for d in report.documents)
    assert why["broken.md"] == "broken symlink: its target does not exist"
    assert why["loop-a.md"] == why["loop-b.md"] == "symlink loop: the link never reaches a file"
    assert "symlink loop" in why["notes/up"]
    assert "already in the corpus (notes)" in why["notes-again"]


def test_links_inside_the_corpus_work(linked_corpus: Path) -> None:
    docs = {d.doc_id: d for d in load_corpus(linked_corpus, CorpusLimits()).documents}
    assert set(docs) == {
        "nato-indo-pacific.txt",
        "notes/baking.md",
        "baking-link.md",
        "shown/kept.md",
    }
    assert docs["baking-link.md"].text == docs["notes/baking.md"].text


def test_external_links_only_when_allowed(linked_corpus: Path) -> None:
    report = load_corpus(linked_corpus, CorpusLimits(follow_external_symlinks=True))
    docs = {d.doc_id: d for d in report.documents}
    assert SECRET in docs["secret.md"].text
    assert SECRET in docs["relative-secret.md"].text
    assert SECRET in docs["linked-folder/more.md"].text
    assert "passwd.txt" in docs  # what the user asked for
    assert reasons(report)["broken.md"] == "broken symlink: its target does not exist"


def test_a_fifo_is_skipped_instead_of_blocking_the_reader(corpus_dir: Path) -> None:
    os.mkfifo(corpus_dir / "pipe.txt")  # open() of a FIFO blocks until a writer comes
    report = load_corpus(corpus_dir, CorpusLimits(timeout_s=30))
    assert reasons(report)["pipe.txt"].startswith("not a regular file")
    assert len(report.documents) == 2


def test_a_corpus_folder_that_is_itself_a_link_is_the_boundary(
    tmp_path: Path, corpus_dir: Path, outside: Path
) -> None:
    alias = tmp_path / "alias"
    os.symlink(corpus_dir, alias)
    os.symlink(outside / "secret.md", corpus_dir / "secret.md")
    found = discover(alias, SUFFIXES)
    assert found.root == corpus_dir.resolve()
    assert [f.rel for f in found.files] == ["nato-indo-pacific.txt", "notes/baking.md"]
    assert found.skipped == [("secret.md", OUTSIDE)]


def test_a_folder_swapped_for_a_link_after_the_walk_is_not_read(
    corpus_dir: Path, outside: Path
) -> None:
    found = discover(corpus_dir, SUFFIXES)
    shutil.rmtree(corpus_dir / "notes")
    os.symlink(outside, corpus_dir / "notes")
    (outside / "baking.md").write_text(SECRET, "utf-8")
    from qa.extraction import shared_extractor

    baking = next(f for f in found.files if f.rel == "notes/baking.md")
    with pytest.raises(Exception, match="outside the corpus"):
        shared_extractor().extract(baking, found.root, CorpusLimits())


def test_an_index_built_before_the_boundary_is_stale_and_the_next_update_drops_the_leak(
    settings: Settings, linked_corpus: Path
) -> None:
    """An older qa followed ``secret.md`` into the index. The serving path reads only the
    index, so the leak is served until the index is rebuilt: status says it is stale (which
    makes `qa serve` rebuild first) and the update removes it."""
    settings = settings.model_copy(update={"corpus_dir": linked_corpus})
    spec, embedder = spec_from_settings(settings), FakeEmbedder()
    old = load_corpus(linked_corpus, CorpusLimits(follow_external_symlinks=True))
    leaked = LoadReport(
        documents=[d for d in old.documents if d.doc_id in {"secret.md", "notes/baking.md"}]
    )
    build_index(linked_corpus, settings.index_dir, embedder, spec, loaded=leaked)
    state, why = index_freshness(linked_corpus, settings.index_dir, spec, CorpusLimits())
    assert state == "stale", why
    report = build_index(linked_corpus, settings.index_dir, embedder, spec, limits=CorpusLimits())
    assert "secret.md" in report.removed
    assert {"path": "secret.md", "reason": OUTSIDE} in report.skipped
    engine = Engine(settings, embedder=embedder)
    engine.load()
    assert all(SECRET not in engine.document(d.doc_id).text for d in engine.documents())


def test_serving_reads_the_index_not_the_corpus(settings: Settings, corpus_dir: Path) -> None:
    """/v1/documents, /v1/ask and MCP resources/read answer from the index alone: with the
    corpus folder gone they still serve exactly what was indexed, and nothing else."""
    embedder = FakeEmbedder()
    build_index(corpus_dir, settings.index_dir, embedder, spec_from_settings(settings))
    indexed = (corpus_dir / "notes" / "baking.md").read_text("utf-8")
    shutil.rmtree(corpus_dir)
    engine = Engine(settings, embedder=embedder)
    engine.load()
    with TestClient(create_app(settings, engine, load=False)) as client:
        listed = client.get("/v1/documents").json()
        assert sorted(d["doc_id"] for d in listed) == ["nato-indo-pacific.txt", "notes/baking.md"]
        assert client.get("/v1/documents/notes/baking.md").json()["text"] == indexed
        for doc_id in ["../outside/secret.md", "/etc/passwd", "notes/../../etc/passwd"]:
            assert client.get(f"/v1/documents/{doc_id}").status_code == 404
        ask = client.post("/v1/ask", json={"question": "sourdough starter"}).json()
        assert {p["citation"]["doc_id"] for p in ask["passages"]} <= {d["doc_id"] for d in listed}

    async def check() -> None:
        async with Client(build_mcp_server(engine)) as mcp:
            read = await mcp.read_resource(document_uri("notes/baking.md"))
            assert read.contents[0].text == indexed  # type: ignore[union-attr]
            with pytest.raises(Exception, match=r"no document|Unknown resource"):
                await mcp.read_resource(document_uri("../../etc/passwd"))

    anyio.run(check)
