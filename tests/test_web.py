"""The web page as files and routes: what the server sends, and what the page may not do.

The page's behaviour in a browser is tested in tests/e2e/test_web.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qa.engine import Engine
from qa.http import create_app
from qa.http.app import WEB_DIR as WEB
from tests.test_http import assert_error


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine.settings, engine, load=False)) as c:
        yield c


class _Refs(HTMLParser):
    """Every src= and href= of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]


def page_refs(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.refs


def test_the_page_files_live_in_the_package() -> None:
    import qa.http

    assert Path(qa.http.__file__).resolve().parent.parent / "web" == WEB
    assert {p.name for p in WEB.iterdir()} >= {"index.html", "app.js", "style.css"}


def test_the_page_is_served_at_the_root_with_a_strict_policy(client: TestClient) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert resp.text == (WEB / "index.html").read_text("utf-8")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert client.head("/").status_code == 200


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/static/app.js", "javascript"),
        ("/static/style.css", "text/css"),
        ("/static/favicon.svg", "image/svg+xml"),
    ],
)
def test_assets_are_served_from_the_package(client: TestClient, path: str, kind: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    assert kind in resp.headers["content-type"]
    assert resp.content == (WEB / path.removeprefix("/static/")).read_bytes()


def test_every_page_reference_is_local_and_served(client: TestClient) -> None:
    refs = page_refs(client.get("/").text)
    assert "/static/app.js" in refs and "/static/style.css" in refs
    for ref in refs:
        assert ref.startswith(("/", "#")) and not ref.startswith("//"), ref
        if ref.startswith("/"):
            assert client.get(ref).status_code == 200, ref


def test_nothing_is_loaded_from_elsewhere() -> None:
    for name in ("index.html", "app.js", "style.css"):
        text = (WEB / name).read_text("utf-8")
        assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text, re.IGNORECASE), name
        assert "@import" not in text and "url(" not in text, name


def test_the_script_never_parses_html() -> None:
    """Document text is untrusted; the page may only ever insert it as text."""
    script = (WEB / "app.js").read_text("utf-8")
    code = re.sub(r"^\s*//.*$", "", script, flags=re.MULTILINE)  # comments may name them
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "DOMParser",
        "createContextualFragment",
        "srcdoc",
        "eval(",
        "new Function",
        'setTimeout("',
        "javascript:",
    ):
        assert sink not in code, sink


def test_the_page_is_served_before_the_index_is_ready(engine: Engine) -> None:
    fresh = Engine(engine.settings, embedder=engine.embedder)
    with TestClient(create_app(engine.settings, fresh, load=False)) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/app.js").status_code == 200
        assert_error(c.post("/v1/ask", json={"question": "NATO"}), 503, "not loaded")


def test_a_missing_asset_uses_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/static/missing.js"), 404)
    assert_error(client.get("/static/../http/app.py"), 404)


def test_the_page_is_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
