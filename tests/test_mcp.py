"""The MCP server in process (the SDK's Client against the server object), fake embedder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote

import anyio
import pytest
from mcp import Client, MCPError

from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.engine import Engine
from qa.mcp_server import build_mcp_server, document_uri
from qa.settings import Settings

QUESTION = "how long does the dough proof in the fridge"


def run(engine: Engine, check) -> None:
    async def main() -> None:
        async with Client(build_mcp_server(engine)) as client:
            await check(client)

    anyio.run(main)


def test_tools_are_listed_with_schemas(engine: Engine) -> None:
    async def check(client: Client) -> None:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"search", "get_document"}
        search = tools["search"]
        assert search.input_schema["required"] == ["question"]
        assert search.input_schema["properties"]["top_k"]["default"] is None  # QA_TOP_K
        engine.settings.top_k = 3
        default = await client.call_tool("search", {"question": QUESTION})
        assert default.structured_content is not None
        assert len(default.structured_content["passages"]) == 3
        assert search.output_schema is not None
        assert "passages" in search.output_schema["properties"]
        assert tools["get_document"].input_schema["required"] == ["doc_id"]

    run(engine, check)


def test_search_returns_the_engines_passages_as_structured_output(engine: Engine) -> None:
    expected = engine.ask(QUESTION, 2)

    async def check(client: Client) -> None:
        result = await client.call_tool("search", {"question": QUESTION, "top_k": 2})
        assert not result.is_error
        out = result.structured_content
        assert out is not None
        assert [p["citation"] for p in out["passages"]] == [
            p.citation.model_dump() for p in expected.passages
        ]
        assert out["answer"] == expected.answer.model_dump()  # type: ignore[union-attr]
        assert out["abstained"] is False

    run(engine, check)


def test_get_document_and_errors_as_tool_errors(engine: Engine) -> None:
    async def check(client: Client) -> None:
        doc = await client.call_tool("get_document", {"doc_id": "notes/baking.md"})
        assert not doc.is_error
        assert doc.structured_content is not None
        assert doc.structured_content["text"] == engine.document("notes/baking.md").text
        missing = await client.call_tool("get_document", {"doc_id": "nope.txt"})
        assert missing.is_error and "no document with id 'nope.txt'" in missing.content[0].text
        bad = await client.call_tool("search", {"question": "   "})
        assert bad.is_error and "question must be a non-empty string" in bad.content[0].text
        bad = await client.call_tool("search", {"question": "ok", "top_k": 0})
        assert bad.is_error and "top_k" in bad.content[0].text
        for not_an_int in (True, "3", 2.0):  # strict like /v1/ask: no silent coercion
            bad = await client.call_tool("search", {"question": "ok", "top_k": not_an_int})
            assert bad.is_error and "top_k" in bad.content[0].text, not_an_int

    run(engine, check)


def test_documents_are_resources(engine: Engine) -> None:
    async def check(client: Client) -> None:
        listed = (await client.list_resources()).resources
        assert sorted(r.uri for r in listed) == [
            "qa://documents/nato-indo-pacific.txt",
            "qa://documents/notes/baking.md",
        ]
        baking = next(r for r in listed if r.name == "notes/baking.md")
        assert baking.title == "Sourdough baking" and baking.mime_type == "text/plain"
        read = await client.read_resource(baking.uri)
        assert read.contents[0].text == engine.document("notes/baking.md").text  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="no document"):
            await client.read_resource(document_uri("missing.md"))

    run(engine, check)


def test_an_engine_without_an_index_says_so(settings: Settings, fake_embedder) -> None:
    async def check(client: Client) -> None:
        result = await client.call_tool("search", {"question": "anything"})
        assert result.is_error and "not loaded" in result.content[0].text
        with pytest.raises(MCPError, match="not loaded"):
            await client.list_resources()

    run(Engine(settings, embedder=fake_embedder), check)


ODD_FILES = {
    "report#2.txt": "Report two covers the harbour crane inspection.",
    "what?.txt": "The question file lists open questions about parking.",
    "100%.txt": "Full coverage means every desk has a lamp.",
    "a%41b.txt": "A percent triplet in a name must not decode to another name.",
    "my notes/q 1.md": "# Quarter one\n\nSales rose in the first quarter.",
    "café/naïve résumé.txt": "The café opens at seven.",
    "日本語.txt": "東京の事務所は九時に開きます。",
}
BEIR_ROWS = [
    {"_id": "d1", "title": "Row one", "text": "The first row is about tulips."},
    {"_id": "../../etc/passwd", "title": "Dots", "text": "A row id with dots is only an id."},
    {"_id": "C:drive?x=1&y=2", "title": "Drive", "text": "A row id like a drive and a query."},
]


@pytest.fixture
def odd_engine(tmp_path, fake_embedder) -> Engine:
    """An index whose document ids hold #, ?, %, spaces, non-ASCII letters, BEIR rows."""
    corpus = tmp_path / "odd"
    for name, text in ODD_FILES.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text + "\n", encoding="utf-8")
    (corpus / "rows.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in BEIR_ROWS), encoding="utf-8"
    )
    settings = Settings(
        corpus_dir=corpus,
        index_dir=tmp_path / "odd-index",
        cache_dir=tmp_path / "cache",
        embedding_model="fake-embedder",
    )
    build_index(corpus, tmp_path / "odd-index", fake_embedder, spec_from_settings(settings))
    engine = Engine(settings, embedder=fake_embedder)
    engine.load()
    return engine


ODD_IDS = [*ODD_FILES, *(f"rows.jsonl#{row['_id']}" for row in BEIR_ROWS)]


def test_every_listed_resource_reads_back_by_its_exact_uri(odd_engine: Engine) -> None:
    async def check(client: Client) -> None:
        listed = {r.name: r.uri for r in (await client.list_resources()).resources}
        assert sorted(listed) == sorted(ODD_IDS)
        for doc_id, uri in listed.items():
            assert uri == document_uri(doc_id)
            assert "#" not in uri and "?" not in uri and " " not in uri and uri.isascii()
            read = await client.read_resource(uri)
            assert read.contents[0].uri == uri
            assert read.contents[0].text == odd_engine.document(doc_id).text  # type: ignore[union-attr]
        # "%41" is "A" once decoded: the encoded "a%41b.txt" must not read another document.
        with pytest.raises(MCPError, match=r"no document with id 'aAb\.txt'"):
            await client.read_resource("qa://documents/a%41b.txt")

    run(odd_engine, check)


@pytest.mark.parametrize(
    ("doc_id", "uri"),
    [
        ("notes/my file.md", "qa://documents/notes/my%20file.md"),
        ("report#2.txt", "qa://documents/report%232.txt"),
        ("what?.txt", "qa://documents/what%3F.txt"),
        ("100%.txt", "qa://documents/100%25.txt"),
        ("a%41b.txt", "qa://documents/a%2541b.txt"),
        ("café.txt", "qa://documents/caf%C3%A9.txt"),
        ("rows.jsonl#d1", "qa://documents/rows.jsonl%23d1"),
        ("a-b_c.d~e/f.txt", "qa://documents/a-b_c.d~e/f.txt"),
    ],
)
def test_document_uris_encode_all_but_slashes_and_unreserved(doc_id: str, uri: str) -> None:
    assert document_uri(doc_id) == uri
    assert unquote(uri.removeprefix("qa://documents/")) == doc_id


CASES = Path(__file__).parent / "data" / "cases"


def test_text_with_terminal_escapes_comes_back_verbatim_as_data(tmp_path, fake_embedder) -> None:
    """MCP carries text as JSON data: escape sequences and markup are neither run nor removed."""
    corpus = tmp_path / "vault"
    shutil.copytree(CASES / "terminal-escapes", corpus)
    raw = (corpus / "vault.txt").read_text("utf-8")
    assert "\x1b]8;;https://example.invalid/phish\x1b\\" in raw and "[bold]" in raw
    settings = Settings(
        corpus_dir=corpus,
        index_dir=tmp_path / "index",
        cache_dir=tmp_path / "cache",
        embedding_model="fake-embedder",
        min_score=-1.0,
    )
    build_index(corpus, tmp_path / "index", fake_embedder, spec_from_settings(settings))
    engine = Engine(settings, embedder=fake_embedder)
    engine.load()

    async def check(client: Client) -> None:
        (listed,) = (await client.list_resources()).resources
        read = await client.read_resource(listed.uri)
        assert read.contents[0].text == raw  # type: ignore[union-attr]
        doc = await client.call_tool("get_document", {"doc_id": "vault.txt"})
        assert doc.structured_content is not None and doc.structured_content["text"] == raw
        found = await client.call_tool("search", {"question": "When is the vault code changed?"})
        assert found.structured_content is not None
        passage = found.structured_content["passages"][0]
        citation = passage["citation"]
        assert passage["text"] == raw[citation["start"] : citation["end"]]
        assert "\x1b[8m hidden text\x1b[28m" in passage["text"]

    run(engine, check)
