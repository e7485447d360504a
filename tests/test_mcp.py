"""The MCP server in process (the SDK's Client against the server object), fake embedder."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client, MCPError

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


def test_document_uris_round_trip_odd_ids() -> None:
    assert document_uri("notes/my file.md") == "qa://documents/notes/my%20file.md"
