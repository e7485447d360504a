"""MCP: the index as tools and resources for MCP clients (chat apps, IDEs, agents).

Built with the official ``mcp`` SDK. Served over stdio by ``qa mcp`` and over streamable
HTTP at ``/mcp`` by ``qa serve``. Each tool and resource only translates to one Engine call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from urllib.parse import quote

import anyio.to_thread
from mcp import MCPError
from mcp.server.mcpserver import MCPServer, ResourceSecurity
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import INTERNAL_ERROR
from mcp_types import Resource as MCPResource
from pydantic import Field

from qa.engine import Engine
from qa.errors import QAError
from qa.schema import AskResponse, DocumentText

DOCUMENT_URI = "qa://documents/{+doc_id}"
_DOCUMENT_PREFIX = "qa://documents/"

INSTRUCTIONS = (
    "Searches a fixed collection of documents. Call `search` with a question to get the "
    "passages that answer it, each with a citation (document, path, line and character "
    "range); quote and cite them. `abstained: true` means the documents do not cover the "
    "question. `get_document` returns a whole document by its doc_id."
)


def document_uri(doc_id: str) -> str:
    """``qa://documents/<doc_id>`` with every character but ``/`` and RFC 3986's unreserved
    ones percent-encoded (UTF-8), so that ``#``, ``?``, ``%``, spaces and non-ASCII letters
    survive the trip: ``report#2.txt`` → ``qa://documents/report%232.txt``.

    RFC 6570's own ``{+doc_id}`` expansion would keep ``#`` and ``?`` (which then end the
    path) and pass ``%41`` through (which then decodes to ``A``); the template's match
    percent-decodes the path once, which inverts this encoding exactly.
    """
    return _DOCUMENT_PREFIX + quote(doc_id, safe="/")


@contextmanager
def _as_tool_error() -> Iterator[None]:
    """Engine errors reach the client as the tool's error text (the message says what to do)."""
    try:
        yield
    except QAError as exc:
        raise ToolError(exc.message) from exc


class QAMCPServer(MCPServer[Any]):
    """An MCPServer whose resource list is the documents of the index in service."""

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine

    async def list_resources(self) -> list[MCPResource]:
        try:
            documents = await anyio.to_thread.run_sync(self.engine.documents)
        except QAError as exc:
            raise MCPError(code=INTERNAL_ERROR, message=exc.message) from exc
        listed = [
            MCPResource(
                uri=document_uri(d.doc_id),
                name=d.doc_id,
                title=d.title,
                description=f"{d.path} ({d.chunks} passages indexed)",
                mime_type="text/plain",
            )
            for d in documents
        ]
        return listed + await super().list_resources()


def build_mcp_server(engine: Engine) -> QAMCPServer:
    server = QAMCPServer(
        engine,
        name="qa",
        title="qa: answers from your documents",
        instructions=INSTRUCTIONS,
        version="0.1.0",
        log_level="WARNING",
    )

    @server.tool(
        title="Search the documents",
        description="Find the passages that answer a question, best first, each with its "
        "citation (doc_id, title, path, lines, characters). `answer` is the best sentence "
        "with its [1] marker; `abstained` is true when the documents do not cover the "
        "question.",
    )
    def search(
        question: Annotated[str, Field(description="The question, in plain words")],
        top_k: Annotated[
            int | None, Field(ge=1, le=50, strict=True, description="How many passages (1-50)")
        ] = None,
    ) -> AskResponse:
        with _as_tool_error():
            return engine.ask(question, top_k)

    @server.tool(
        title="Read a document",
        description="The full text of one document by its doc_id (as in search citations "
        "or the resource list). Citation start/end offsets index into this text.",
    )
    def get_document(
        doc_id: Annotated[str, Field(description="The document id, e.g. notes/baking.md")],
    ) -> DocumentText:
        with _as_tool_error():
            return engine.document(doc_id)

    @server.resource(
        DOCUMENT_URI,
        name="document",
        title="Document text",
        description="The text of a document in the index; qa://documents/<doc_id>.",
        mime_type="text/plain",
        # doc_id is only a key into the index, never a filesystem path: a BEIR row id may
        # hold ".." or look like "C:x" and must still be readable.
        security=ResourceSecurity(exempt_params={"doc_id"}),
    )
    def document(doc_id: str) -> str:
        try:
            return engine.document(doc_id).text
        except QAError as exc:
            raise ResourceError(exc.message) from exc

    return server


__all__ = ["DOCUMENT_URI", "QAMCPServer", "build_mcp_server", "document_uri"]
