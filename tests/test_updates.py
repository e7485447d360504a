"""Incremental updates give the same index as a fresh build, and cost only the change."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.engine import Engine
from qa.http import create_app
from qa.index import current_generation_dir, list_generations, load_current, rollback
from qa.settings import Settings
from tests.fakes import FakeEmbedder


def update(settings: Settings, embedder: FakeEmbedder, **kw):
    return build_index(
        Path(settings.corpus_dir),
        Path(settings.index_dir),
        embedder,
        spec_from_settings(settings),
        keep_generations=settings.keep_generations,
        skip_if_unchanged=True,
        **kw,
    )


def snapshot(index_dir: Path, settings: Settings):
    data = load_current(index_dir, spec_from_settings(settings))
    rows = data.chunks(data.chunk_ids)
    chunks = sorted(
        (c.doc_id, c.start, c.end, c.line_start, c.line_end, c.heading, c.text) for c in rows
    )
    vectors = {
        (c.doc_id, c.start, c.end): tuple(np.round(v, 5))
        for c, v in zip(rows, data.chunk_vectors(data.chunk_ids), strict=True)
    }
    return data, chunks, vectors


def change_corpus(corpus: Path) -> None:
    """Add, change, delete and rename one document each."""
    (corpus / "notes" / "pasta.md").write_text(
        "# Pasta\n\nBoil salted water and cook the spaghetti for nine minutes.\n", "utf-8"
    )
    baking = corpus / "notes" / "baking.md"
    baking.write_text(baking.read_text("utf-8") + "\nRest the loaf for an hour.\n", "utf-8")
    (corpus / "nato-indo-pacific.txt").rename(corpus / "nato.txt")


def test_update_equals_a_fresh_build(settings: Settings, tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    (Path(settings.corpus_dir) / "gone.md").write_text("# Gone\n\nTo be deleted.\n", "utf-8")
    update(settings, embedder)
    change_corpus(Path(settings.corpus_dir))
    (Path(settings.corpus_dir) / "gone.md").unlink()
    report = update(settings, embedder)
    assert report.added == ["notes/pasta.md"]
    assert report.changed == ["notes/baking.md"]
    assert report.removed == ["gone.md"]
    assert report.renamed == [("nato-indo-pacific.txt", "nato.txt")]

    fresh = settings.model_copy(update={"index_dir": tmp_path / "fresh"})
    build_index(
        Path(fresh.corpus_dir), Path(fresh.index_dir), FakeEmbedder(), spec_from_settings(fresh)
    )
    updated, chunks_u, vectors_u = snapshot(Path(settings.index_dir), settings)
    rebuilt, chunks_f, vectors_f = snapshot(Path(fresh.index_dir), fresh)
    assert chunks_u == chunks_f
    assert vectors_u == vectors_f
    for question in ("spaghetti boil", "NATO partners Japan", "rest the loaf"):
        a = Engine(settings, embedder=embedder)
        a.install(updated)
        b = Engine(fresh, embedder=embedder)
        b.install(rebuilt)
        ra, rb = a.ask(question, 5), b.ask(question, 5)
        assert [(p.citation.doc_id, p.citation.start, p.score) for p in ra.passages] == [
            (p.citation.doc_id, p.citation.start, p.score) for p in rb.passages
        ]


def ids_by_span(index_dir: Path, settings: Settings) -> dict[tuple[str, int, int], int]:
    data = load_current(index_dir, spec_from_settings(settings))
    chunks = data.chunks(data.chunk_ids)
    return {(c.doc_id, c.start, c.end): int(i) for c, i in zip(chunks, data.chunk_ids, strict=True)}


def test_an_unchanged_chunk_keeps_its_id_across_generations(
    settings: Settings, tmp_path: Path
) -> None:
    """Stable ids: an unchanged document's chunks keep theirs; a changed document's chunks
    and a renamed document's chunks get new ones; a fresh build gives the same ids."""
    index_dir = Path(settings.index_dir)
    update(settings, FakeEmbedder())
    before = ids_by_span(index_dir, settings)
    change_corpus(Path(settings.corpus_dir))
    update(settings, FakeEmbedder())
    after = ids_by_span(index_dir, settings)
    kept = {k: v for k, v in before.items() if k[0] not in {"notes/baking.md"}}
    moved = {k: v for k, v in kept.items() if k[0] == "nato-indo-pacific.txt"}
    for key, chunk_id in kept.items():
        if key in moved:
            continue
        assert after[key] == chunk_id, key
    assert moved and not set(moved.values()) & set(after.values()), "a rename gets new ids"
    baking_before = {v for k, v in before.items() if k[0] == "notes/baking.md"}
    baking_after = {v for k, v in after.items() if k[0] == "notes/baking.md"}
    assert baking_before.isdisjoint(baking_after), "the document's content hash is in its ids"
    assert len(set(after.values())) == len(after), "ids are unique"
    fresh = settings.model_copy(update={"index_dir": tmp_path / "fresh"})
    build_index(
        Path(fresh.corpus_dir), Path(fresh.index_dir), FakeEmbedder(), spec_from_settings(fresh)
    )
    assert ids_by_span(Path(fresh.index_dir), fresh) == after


def test_update_embeds_only_what_changed(settings: Settings) -> None:
    update(settings, FakeEmbedder())
    corpus = Path(settings.corpus_dir)
    (corpus / "nato-indo-pacific.txt").rename(corpus / "renamed.txt")
    counter = FakeEmbedder()
    report = update(settings, counter)
    assert counter.texts_embedded == 0, "a rename re-uses every vector"
    assert report.renamed == [("nato-indo-pacific.txt", "renamed.txt")]
    (corpus / "new.md").write_text("# New\n\nOne new sentence.\n", "utf-8")
    counter = FakeEmbedder()
    report = update(settings, counter)
    assert report.added == ["new.md"]
    assert 0 < counter.texts_embedded <= 3


def test_unchanged_corpus_is_a_quick_no_op(settings: Settings) -> None:
    first = update(settings, FakeEmbedder())
    counter = FakeEmbedder()
    began = time.perf_counter()
    report = update(settings, counter)
    assert report.up_to_date and report.generation == first.generation
    assert counter.calls == 0
    assert [p.name for p in list_generations(Path(settings.index_dir))] == ["gen-000001"]
    assert time.perf_counter() - began < 5


def test_rollback_restores_the_previous_generation(settings: Settings) -> None:
    embedder = FakeEmbedder()
    update(settings, embedder)
    (Path(settings.corpus_dir) / "new.md").write_text("# New\n\nFresh text.\n", "utf-8")
    update(settings, embedder)
    index_dir = Path(settings.index_dir)
    assert current_generation_dir(index_dir).name == "gen-000002"
    target = rollback(index_dir, spec_from_settings(settings))
    assert target.name == "gen-000001"
    assert load_current(index_dir).document("new.md") is None
    # the next update starts from the rolled-back generation and completes
    report = update(settings, embedder)
    assert report.generation == 3 and report.added == ["new.md"]  # numbers are never reused


def test_rollback_without_an_older_generation_says_so(settings: Settings) -> None:
    update(settings, FakeEmbedder())
    with pytest.raises(Exception, match="nothing to roll back"):
        rollback(Path(settings.index_dir))


def test_keep_generations_setting(settings: Settings) -> None:
    settings = settings.model_copy(update={"keep_generations": 3})
    embedder = FakeEmbedder()
    for i in range(5):
        (Path(settings.corpus_dir) / f"n{i}.md").write_text(f"# N{i}\n\nText {i}.\n", "utf-8")
        update(settings, embedder)
    names = [p.name for p in list_generations(Path(settings.index_dir))]
    assert names == ["gen-000003", "gen-000004", "gen-000005"]


# ------------------------------------------------------------------ admin endpoint


@pytest.fixture
def admin_app(settings: Settings, fake_embedder: FakeEmbedder):
    settings = settings.model_copy(update={"admin_token": "s3cret"})
    update(settings, fake_embedder)
    engine = Engine(settings, embedder=fake_embedder)
    engine.load()
    with TestClient(create_app(settings, engine, load=False)) as client:
        yield client, settings, engine


def test_update_endpoint_needs_the_token(admin_app) -> None:
    client, _, _ = admin_app
    assert client.post("/v1/index/update").status_code == 401
    wrong = client.post("/v1/index/update", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"


def test_update_endpoint_disabled_without_a_token(engine: Engine) -> None:
    with TestClient(create_app(engine.settings, engine, load=False)) as client:
        resp = client.post("/v1/index/update", headers={"Authorization": "Bearer x"})
        assert resp.status_code == 403
        assert "QA_ADMIN_TOKEN" in resp.json()["error"]["message"]


def test_update_endpoint_runs_a_job_and_the_service_switches(admin_app) -> None:
    client, settings, _ = admin_app
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/ask", json={"question": "spaghetti"}).json()["index"]["generation"] == 1
    (Path(settings.corpus_dir) / "pasta.md").write_text(
        "# Pasta\n\nCook the spaghetti for nine minutes.\n", "utf-8"
    )
    resp = client.post("/v1/index/update", headers=auth)
    assert resp.status_code == 202
    job_id = resp.json()["job"]["id"]
    for _ in range(100):
        job = client.get(f"/v1/index/jobs/{job_id}", headers=auth).json()["job"]
        if job["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert job["state"] == "succeeded", job
    assert job["report"]["added"] == ["pasta.md"]
    body = client.post("/v1/ask", json={"question": "spaghetti nine minutes"}).json()
    assert body["index"]["generation"] == 2
    assert body["passages"][0]["citation"]["doc_id"] == "pasta.md"
    status = client.get("/v1/index").json()
    assert status["generation"] == 2 and status["update"]["last"]["state"] == "succeeded"


def test_documents_are_served_from_the_generation_in_service(admin_app) -> None:
    client, settings, _ = admin_app
    path = Path(settings.corpus_dir) / "notes" / "baking.md"
    served = client.get("/v1/documents/notes/baking.md").json()
    path.write_text("# Rewritten\n\nCompletely different.\n", "utf-8")  # edited, not updated
    again = client.get("/v1/documents/notes/baking.md").json()
    assert again["text"] == served["text"] != path.read_text("utf-8")
    body = client.post("/v1/ask", json={"question": "sourdough starter"}).json()
    cited = body["passages"][0]["citation"]
    assert cited["sha256"] == served["sha256"]
