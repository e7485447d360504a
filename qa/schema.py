"""The shapes qa answers with, shared by the HTTP API, the CLI, chat and MCP."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Citation(BaseModel):
    doc_id: str
    title: str
    path: str
    start: int = Field(description="Character offset where the passage starts in the document")
    end: int = Field(description="Character offset where the passage ends (exclusive)")
    line_start: int
    line_end: int
    page: int | None = None
    heading: str = ""
    sha256: str = Field(description="sha256 of the document text the offsets point into")


class Span(BaseModel):
    start: int
    end: int


class Passage(BaseModel):
    rank: int
    score: float
    text: str
    citation: Citation
    highlight: Span = Field(description="The sentence that best answers, absolute offsets")


class Answer(BaseModel):
    text: str
    citations: list[int]


class IndexInfo(BaseModel):
    generation: int
    built_at: str


class AskResponse(BaseModel):
    question: str
    answer: Answer | None
    abstained: bool
    confidence: float = Field(
        description="Best cosine of the question to a returned passage or its sentence; "
        "the answer abstains below QA_MIN_SCORE"
    )
    message: str | None = None
    passages: list[Passage]
    timings_ms: dict[str, float]
    index: IndexInfo


class DocumentSummary(BaseModel):
    doc_id: str
    title: str
    path: str
    chunks: int
    sha256: str


class DocumentText(BaseModel):
    doc_id: str
    title: str
    path: str
    text: str
    sha256: str
    page_starts: list[int] = Field(default_factory=list)


class NumberedCitation(BaseModel):
    """A source of a chat answer: the ``[marker]`` in the reply text and what it points to."""

    marker: int = Field(description="The number n of the [n] marker in the reply text")
    citation: Citation
    text: str = Field(description="The cited passage")
