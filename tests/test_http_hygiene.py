"""HTTP for a network nobody trusts: Host names, body limits, slow clients, security
headers, Allow and WWW-Authenticate, strict types, the error shape in the schema, and
/v1/index without paths for the public."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from qa.engine import Engine
from qa.http import create_app
from qa.http.middleware import PAGE_CSP, default_allowed_hosts, host_allowed, host_name
from qa.http.server import server_config
from qa.settings import Settings


def assert_error(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    for word in words:
        assert word in body["error"]["message"], body
    return body


def app_for(engine: Engine, base_url: str = "http://testserver", **values) -> TestClient:
    settings = Settings(**(engine.settings.model_dump() | values))
    engine.settings = settings
    app = create_app(settings, engine, load=False)
    return TestClient(app, base_url=base_url, raise_server_exceptions=False)


@pytest.fixture
def loopback(engine: Engine) -> Iterator[TestClient]:
    """Bound to loopback with QA_ALLOWED_HOSTS unset, as `qa serve` runs by default."""
    with app_for(engine, "http://127.0.0.1:8000", allowed_hosts=None, host="127.0.0.1") as client:
        yield client


# ------------------------------------------------------------------ allowed hosts


def test_default_allowed_hosts_follow_the_bind_address() -> None:
    assert default_allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert default_allowed_hosts("::1") == ["localhost", "127.0.0.1", "[::1]"]
    assert default_allowed_hosts("0.0.0.0") == ["*"]
    assert default_allowed_hosts("10.1.2.3")[0] == "10.1.2.3"
    assert host_name("[::1]:8000") == "[::1]" and host_name("Example.COM:80") == "example.com"
    assert host_allowed("api.example.com", ["*.example.com"])
    assert not host_allowed("example.com.attacker.net", ["*.example.com", "example.com"])


@pytest.mark.parametrize("path", ["/v1/documents", "/v1/index", "/", "/static/index.html", "/mcp"])
def test_a_hostile_host_header_is_refused_everywhere(loopback: TestClient, path: str) -> None:
    resp = loopback.get(path, headers={"Host": "attacker.example"})
    body = assert_error(resp, 421, "attacker.example", "QA_ALLOWED_HOSTS")
    assert body["error"]["code"] == "misdirected_request"
    assert "nato" not in resp.text.lower()


def test_mcp_post_with_a_hostile_host_gets_the_same_answer(loopback: TestClient) -> None:
    resp = loopback.post(
        "/mcp",
        headers={"Host": "attacker.example:8000", "Accept": "application/json"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert_error(resp, 421, "attacker.example")


def test_mcp_serves_an_allowed_host_in_any_case(loopback: TestClient) -> None:
    resp = loopback.post(
        "/mcp",
        headers={"Host": "LocalHost:8000", "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == 1


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"])
def test_loopback_names_are_served(loopback: TestClient, host: str) -> None:
    resp = loopback.get("/v1/documents", headers={"Host": host})
    assert resp.status_code == 200, resp.text


def test_configured_hosts_replace_the_default(engine: Engine) -> None:
    with app_for(engine, allowed_hosts="qa.internal, *.example.org") as client:
        assert client.get("/healthz", headers={"Host": "qa.internal:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "a.example.org"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 421


# ------------------------------------------------------------------ body size


def test_a_body_over_the_limit_is_413_before_it_is_read(engine: Engine) -> None:
    with app_for(engine, max_body_bytes=2048) as client:
        big = {"question": "x" * 4000}
        assert_error(client.post("/v1/ask", json=big), 413, "2048", "QA_MAX_BODY_BYTES")
        chat = {"messages": [{"role": "user", "content": "y" * 5000}]}
        assert_error(client.post("/v1/chat/completions", json=chat), 413)
        assert client.post("/v1/ask", json={"question": "NATO"}).status_code == 200


def test_a_chunked_body_over_the_limit_is_413(engine: Engine) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"}'

    with app_for(engine, max_body_bytes=4096) as client:
        resp = client.post(
            "/v1/ask", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_error(resp, 413)


# ------------------------------------------------------------------ slow clients


@pytest.fixture
def live_server(engine: Engine) -> Iterator[tuple[str, int]]:
    """The app under uvicorn with the protocol and limits `qa serve` uses, short timeouts."""
    settings = Settings(
        **(engine.settings.model_dump() | {"header_timeout": 1.0, "body_timeout": 1.0})
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings.host, settings.port = "127.0.0.1", port
    settings.allowed_hosts = None
    server = uvicorn.Server(server_config(create_app(settings, engine, load=False), settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(10)
    sock.close()


def read_until_closed(conn: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; and when it closed."""
    conn.settimeout(limit)
    data = b""
    began = time.monotonic()
    while True:
        piece = conn.recv(65536)
        if not piece:
            return data, time.monotonic() - began
        data += piece


def test_a_client_that_trickles_its_headers_is_cut_off(live_server: tuple[str, int]) -> None:
    host, port = live_server
    with socket.create_connection((host, port)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        began = time.monotonic()
        closed_after = None
        # one header byte every 0.2 s: each byte would reset a plain idle timer
        for _ in range(40):
            try:
                conn.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - began
                break
            conn.settimeout(0.2)
            try:
                if conn.recv(1024) == b"":
                    closed_after = time.monotonic() - began
                    break
            except TimeoutError:
                continue
    assert closed_after is not None, "the server kept a trickling client for 8 s"
    assert closed_after < 3.0, closed_after


def test_a_client_that_never_sends_its_body_gets_408(live_server: tuple[str, int]) -> None:
    host, port = live_server
    with socket.create_connection((host, port)) as conn:
        conn.sendall(
            b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"question": '
        )
        data, seconds = read_until_closed(conn, limit=10)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"QA_BODY_TIMEOUT" in data
    assert seconds < 5


def test_a_complete_request_on_the_live_server_is_answered(live_server: tuple[str, int]) -> None:
    host, port = live_server
    resp = httpx.get(f"http://{host}:{port}/v1/documents")
    assert resp.status_code == 200 and resp.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/static/index.html"),
        ("GET", "/static/app.js"),
        ("GET", "/v1/documents"),
        ("GET", "/v1/documents/no-such-doc"),
        ("POST", "/v1/ask"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("DELETE", "/v1/ask"),
    ],
)
def test_security_headers_on_every_response(client: TestClient, method: str, path: str) -> None:
    resp = client.request(method, path)
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    csp = resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    if resp.headers["content-type"].startswith("text/html") and path != "/docs":
        assert csp == PAGE_CSP
    if path == "/docs":  # Swagger UI: its one inline script is allowed by hash, nothing else
        assert "'sha256-" in csp and "'unsafe-inline'" not in csp.split("style-src")[0]


def test_405_names_every_allowed_method(client: TestClient) -> None:
    resp = client.request("DELETE", "/v1/ask")
    assert_error(resp, 405, "DELETE")
    assert set(resp.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    resp = client.put("/v1/index/update")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"


def test_get_mcp_answers_at_once_instead_of_opening_a_stream(client: TestClient) -> None:
    resp = client.get("/mcp", headers={"Accept": "text/event-stream"})
    assert_error(resp, 405, "POST")
    assert resp.headers["allow"] == "POST"


def test_401_carries_a_bearer_challenge(engine: Engine) -> None:
    with app_for(engine, admin_token="s3cret") as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = client.post("/v1/index/update", headers=headers)
            assert_error(resp, 401)
            assert resp.headers["www-authenticate"] == 'Bearer realm="qa"'


# ------------------------------------------------------------------ strict types

CHAT = {"messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/ask", {"question": "NATO", "top_k": True}, "top_k"),
        ("/v1/ask", {"question": "NATO", "top_k": "3"}, "top_k"),
        ("/v1/ask", {"question": "NATO", "top_k": 2.0}, "top_k"),
        ("/v1/ask", {"question": 5}, "question"),
        ("/v1/ask", {"question": "NATO", "filters": {"doc_id": "a.md"}}, "filters.doc_id"),
        ("/v1/ask", {"question": "NATO", "filters": {"path_prefix": 1}}, "path_prefix"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {**CHAT, "top_k": True}, "top_k"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 7}]}, "content"),
    ],
)  # fmt: skip
def test_types_are_not_coerced(client: TestClient, path: str, payload: dict, field: str) -> None:
    assert_error(client.post(path, json=payload), 422, field)


# ------------------------------------------------------------------ the schema


def test_openapi_documents_the_real_error_shape_and_statuses(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    expected = {
        ("post", "/v1/ask"): {"200", "400", "408", "413", "421", "422", "503"},
        ("get", "/v1/ask"): {"200", "421", "422", "503"},
        ("get", "/v1/documents/{doc_id}"): {"200", "404", "421", "503"},
        ("get", "/v1/index"): {"200", "401", "421", "503"},
        ("post", "/v1/index/update"): {"202", "401", "403", "421"},
        ("get", "/v1/index/jobs/{job_id}"): {"200", "401", "403", "404", "421"},
        ("post", "/v1/chat/completions"): {"200", "400", "404", "413", "422", "503"},
    }
    for (method, path), statuses in expected.items():
        responses = schema["paths"][path][method]["responses"]
        assert statuses <= set(responses), (method, path, set(responses))
        for status in set(responses) - {"200", "202"}:
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody"), (path, status, ref)


# ------------------------------------------------------------------ /v1/index


def test_index_status_shows_no_paths_or_job_ids_without_the_token(
    engine: Engine, tmp_path: Path
) -> None:
    with app_for(engine, admin_token="s3cret") as client:
        auth = {"Authorization": "Bearer s3cret"}
        job = client.post("/v1/index/update", headers=auth).json()["job"]
        for _ in range(200):
            if client.get(f"/v1/index/jobs/{job['id']}", headers=auth).json()["job"]["state"] in (
                "succeeded",
                "failed",
            ):
                break
            time.sleep(0.05)
        public = client.get("/v1/index")
        assert public.status_code == 200
        text = public.text
        assert str(tmp_path) not in text and job["id"] not in text
        assert "skipped" not in public.json() and "report" not in text
        assert public.json()["update"]["last"]["state"] == "succeeded"
        full = client.get("/v1/index", headers=auth).json()
        assert full["update"]["last"]["id"] == job["id"]
        assert str(tmp_path) in full["update"]["last"]["report"]["path"]
        assert_error(client.get("/v1/index", headers={"Authorization": "Bearer nope"}), 401)


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine.settings, engine, load=False)) as c:
        yield c


def test_an_internal_error_carries_the_headers_and_request_id(
    client: TestClient, engine: Engine, monkeypatch
) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine, "ask", boom)
    resp = client.post("/v1/ask", json={"question": "NATO"}, headers={"X-Request-ID": "oops-1"})
    assert_error(resp, 500, "server log")
    assert "secret" not in resp.text
    assert resp.headers["x-request-id"] == "oops-1"
    assert resp.headers["x-content-type-options"] == "nosniff"
