from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from qa.engine import Engine
from qa.http import create_app


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    app = create_app(engine.settings, engine, load=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_error(resp, status: int, *words: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    for word in words:
        assert word in body["error"]["message"]
    assert "Traceback" not in resp.text


def test_post_ask_has_the_documented_shape(client: TestClient) -> None:
    resp = client.post("/v1/ask", json={"question": "sourdough proof overnight", "top_k": 2})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) >= {"question", "answer", "abstained", "passages", "timings_ms", "index"}
    assert body["answer"]["citations"] == [1] and body["answer"]["text"].endswith("[1]")
    passage = body["passages"][0]
    assert set(passage) == {"rank", "score", "text", "citation", "highlight"}
    assert set(passage["citation"]) >= {
        "doc_id", "title", "path", "start", "end", "line_start", "line_end", "page", "heading"
    }  # fmt: skip
    assert set(body["timings_ms"]) == {"embed", "search", "total"}
    assert body["index"]["generation"] == 1
    assert len(body["passages"]) == 2


def test_get_ask_matches_post(client: TestClient) -> None:
    post = client.post("/v1/ask", json={"question": "NATO partners", "top_k": 3}).json()
    get = client.get("/v1/ask", params={"question": "NATO partners", "top_k": 3}).json()
    assert [p["text"] for p in get["passages"]] == [p["text"] for p in post["passages"]]


def test_filters_over_http(client: TestClient) -> None:
    body = client.post(
        "/v1/ask", json={"question": "NATO", "top_k": 5, "filters": {"path_prefix": "notes/"}}
    ).json()
    assert {p["citation"]["path"] for p in body["passages"]} == {"notes/baking.md"}


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"question": ""}, ["question"]),
        ({"question": "   "}, ["question"]),
        ({"question": "x" * 2001}, ["question", "2000"]),
        ({"question": "ok", "top_k": 0}, ["top_k"]),
        ({"question": "ok", "top_k": 51}, ["top_k"]),
        ({"question": "ok", "top_k": "many"}, ["top_k"]),
        ({}, ["question", "required"]),
        ({"question": 5}, ["question"]),
    ],
)
def test_bad_requests_name_the_field(client: TestClient, payload: dict, words: list[str]) -> None:
    assert_error(client.post("/v1/ask", json=payload), 422, *words)


def test_body_that_is_not_json(client: TestClient) -> None:
    resp = client.post(
        "/v1/ask", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(resp, 400, "JSON")


def test_get_ask_validation(client: TestClient) -> None:
    assert_error(client.get("/v1/ask"), 422, "question")
    assert_error(client.get("/v1/ask", params={"question": " "}), 422, "question")
    assert_error(client.get("/v1/ask", params={"question": "a", "top_k": 99}), 422, "top_k")


def test_documents_list_and_text(client: TestClient, engine: Engine) -> None:
    docs = client.get("/v1/documents").json()
    assert {d["doc_id"] for d in docs} == {"nato-indo-pacific.txt", "notes/baking.md"}
    assert all(set(d) == {"doc_id", "title", "path", "chunks", "sha256"} for d in docs)
    doc = client.get("/v1/documents/notes/baking.md").json()  # an id with a slash
    assert doc["text"] == engine.data.document("notes/baking.md").text
    assert set(doc) >= {"doc_id", "title", "path", "text", "sha256"}
    assert_error(client.get("/v1/documents/none.txt"), 404, "none.txt")


def test_citation_offsets_point_into_served_text(client: TestClient) -> None:
    body = client.post("/v1/ask", json={"question": "Japan Australia partnership"}).json()
    for p in body["passages"]:
        doc = client.get(f"/v1/documents/{p['citation']['doc_id']}").json()
        assert doc["text"][p["citation"]["start"] : p["citation"]["end"]] == p["text"]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_not_ready_until_the_index_is_loaded(engine: Engine) -> None:
    fresh = Engine(engine.settings, embedder=engine.embedder)
    with TestClient(create_app(engine.settings, fresh, load=False)) as c:
        assert c.get("/healthz").status_code == 200
        assert_error(c.get("/readyz"), 503, "loading")
        assert_error(c.post("/v1/ask", json={"question": "NATO"}), 503, "not loaded")


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.delete("/v1/ask"), 405)


def test_internal_errors_hide_the_trace(client: TestClient, engine: Engine, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine, "ask", boom)
    resp = client.post("/v1/ask", json={"question": "NATO"})
    assert_error(resp, 500)
    assert "secret" not in resp.text


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/ask" in spec["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    # Swagger UI comes from this server, not a CDN: /docs works offline
    assert "cdn" not in docs.text.lower()
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
