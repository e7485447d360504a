"""OpenAI-compatible chat: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Routes parse the OpenAI wire format, call qa.chat.reply, and shape the answer as a chat
completion (or a stream of ``chat.completion.chunk`` server-sent events). The numbered
citations also come machine-readable in a top-level ``citations`` field (and in the last
chunk of a stream); ``qa`` tells how the question was read and answered.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from qa.chat import ROLES, ChatReply, Turn, reply
from qa.errors import InvalidRequest, UnknownModel
from qa.http.deps import EngineDep, SynthesizerDep
from qa.http.errors import BODY, COMMON, errors
from qa.metrics import observe_stage

MODEL_ID = "qa"
_STREAM_PIECE = re.compile(r"\S+\s*|\s+")
WORDS_PER_CHUNK = 4


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    # checked in turns_from, with a message naming the message's index
    role: str = Field(json_schema_extra={"enum": list(ROLES)})
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's request body; sampling options (temperature, max_tokens, ...) are ignored."""

    model_config = ConfigDict(extra="allow", strict=True)  # "stream": "yes" is not true
    model: str = Field(MODEL_ID, description="Always 'qa'")
    messages: list[ChatMessage] = Field(
        ..., description="The conversation; the last user message is the question"
    )
    stream: bool = False
    top_k: int | None = Field(
        None, ge=1, le=50, description="qa extension: passages to retrieve (default QA_TOP_K)"
    )


def _text(content: str | list[ContentPart] | None, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise InvalidRequest(
                f"messages[{i}].content[{j}] has type {part.type!r}; qa reads text parts "
                "only ({'type': 'text', 'text': '...'})"
            )
        texts.append(part.text)
    return "\n".join(texts)


def turns_from(messages: list[ChatMessage]) -> list[Turn]:
    """Validate the conversation at the boundary; each message names its index."""
    if not messages:
        raise InvalidRequest(
            "messages is empty; send at least one message like "
            "{'role': 'user', 'content': 'your question'}"
        )
    turns = []
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            allowed = ", ".join(repr(r) for r in ROLES)
            raise InvalidRequest(f"messages[{i}].role is {message.role!r}; use one of {allowed}")
        text = _text(message.content, i)
        if message.role == "user" and not text.strip():
            raise InvalidRequest(f"messages[{i}].content is empty; a user message needs text")
        turns.append(Turn(message.role, text))
    return turns


def _check_model(model: str) -> None:
    if model != MODEL_ID:
        raise UnknownModel(
            f"model {model!r} is not served here; use {MODEL_ID!r} (GET /v1/models lists it)"
        )


def _extras(answer: ChatReply) -> dict[str, Any]:
    """The top-level fields qa adds to OpenAI's shape."""
    return {
        "citations": [c.model_dump(mode="json") for c in answer.citations],
        "qa": {
            "question": answer.rewrite.question,
            "query": answer.rewrite.query,
            "follow_up": answer.rewrite.kind,
            "rewritten_by": answer.rewrite.rewritten_by,
            "abstained": answer.abstained,
            "written_by": answer.written_by,
            "index": answer.result.index.model_dump(),
            "timings_ms": answer.result.timings_ms,
        },
    }


def completion(answer: ChatReply, completion_id: str, created: int) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        **_extras(answer),
    }


def _pieces(text: str) -> Iterator[str]:
    words = _STREAM_PIECE.findall(text)
    for start in range(0, len(words), WORDS_PER_CHUNK):
        yield "".join(words[start : start + WORDS_PER_CHUNK])


def stream_events(answer: ChatReply, completion_id: str, created: int) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL_ID,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in _pieces(answer.text):
        yield chunk({"content": piece}, None)
    yield chunk({}, "stop", **_extras(answer))
    yield "data: [DONE]\n\n"


def create_chat_router() -> APIRouter:
    router = APIRouter(tags=["chat"])
    started = int(time.time())
    model_card = {"id": MODEL_ID, "object": "model", "created": started, "owned_by": "qa"}

    @router.get("/v1/models", responses=errors(*COMMON))
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @router.get("/v1/models/{model_id}", responses=errors(404, *COMMON))
    def get_model(model_id: str) -> dict[str, Any]:
        _check_model(model_id)
        return model_card

    @router.post(
        "/v1/chat/completions", response_model=None, responses=errors(*BODY, 404, 503, *COMMON)
    )
    def chat_completions(
        body: ChatCompletionRequest, engine: EngineDep, synthesizer: SynthesizerDep
    ) -> dict[str, Any] | StreamingResponse:
        _check_model(body.model)
        answer = reply(engine, turns_from(body.messages), body.top_k, synthesizer)
        if "synthesis" in answer.result.timings_ms:
            observe_stage("synthesis", answer.result.timings_ms["synthesis"] / 1000)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            return completion(answer, completion_id, created)
        return StreamingResponse(
            stream_events(answer, completion_id, created),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


__all__ = ["MODEL_ID", "create_chat_router", "turns_from"]
