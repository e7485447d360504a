"""The OpenAI-compatible chat endpoint and the chat core, on the fake embedder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.chat import Turn, assistant_answers, found_answers, reply, source_line
from qa.engine import Engine
from qa.errors import InvalidRequest
from qa.http import create_app
from qa.schema import Citation
from qa.settings import Settings
from tests.test_http import assert_error

QUESTION = "how long does the dough proof in the fridge"


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine.settings, engine, load=False)) as c:
        yield c


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def chat(client: TestClient, *messages: dict, **extra):
    return client.post(
        "/v1/chat/completions", json={"model": "qa", "messages": list(messages), **extra}
    )


def sse_events(resp) -> list[str]:
    assert resp.headers["content-type"].startswith("text/event-stream")
    blocks = resp.text.split("\n\n")
    assert blocks[-1] == ""  # every event ends with a blank line
    assert all(b.startswith("data: ") for b in blocks[:-1])
    return [b.removeprefix("data: ") for b in blocks[:-1]]


def test_models_lists_qa(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"]) for m in body["data"]] == [("qa", "model")]
    assert client.get("/v1/models/qa").json()["id"] == "qa"
    assert_error(client.get("/v1/models/gpt-4o"), 404, "'qa'")


def test_completion_has_openai_shape_and_cites(client: TestClient, engine: Engine) -> None:
    resp = chat(client, {"role": "system", "content": "be brief"}, user(QUESTION))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "qa"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    ask = engine.ask(QUESTION)
    assert ask.answer is not None
    first = ask.passages[0].citation
    assert content == (
        f"{ask.answer.text}\n\nSources:\n- [1] Sourdough baking — notes/baking.md, "
        f"lines {first.line_start}-{first.line_end}"
    )
    (cited,) = body["citations"]
    assert cited["marker"] == 1
    assert cited["citation"] == first.model_dump()
    assert cited["text"] == ask.passages[0].text
    assert body["qa"]["follow_up"] == "standalone" and body["qa"]["query"] == QUESTION
    assert body["qa"]["written_by"] == "extractive" and not body["qa"]["abstained"]


def test_stream_sends_the_same_reply_in_openai_chunks(client: TestClient) -> None:
    whole = chat(client, user(QUESTION)).json()
    resp = chat(client, user(QUESTION), stream=True)
    assert resp.status_code == 200
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert len(chunks) > 3  # really split, not one blob
    assert [c["choices"][0]["finish_reason"] for c in chunks[-2:]] == [None, "stop"]
    assert chunks[-1]["citations"] == whole["citations"]
    assert "citations" not in chunks[0]


def test_content_as_text_parts_is_read(client: TestClient) -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": QUESTION}]}
    body = chat(client, parts).json()
    assert body["qa"]["question"] == QUESTION
    assert body["citations"]


def test_follow_up_uses_the_earlier_user_turn(client: TestClient) -> None:
    body = chat(
        client,
        user("what temperature to bake the sourdough at"),
        {"role": "assistant", "content": "Bake it at 250 degrees [1]"},
        user("and for how long?"),
    ).json()
    assert body["qa"]["follow_up"] == "substitution"
    assert body["qa"]["query"].startswith("how long")
    assert "temperature" in body["qa"]["query"] and "bake" in body["qa"]["query"]


def test_abstention_says_the_documents_do_not_cover_it(engine: Engine) -> None:
    engine.settings = engine.settings.model_copy(update={"min_score": 0.99})
    with TestClient(create_app(engine.settings, engine, load=False)) as client:
        body = chat(client, user(QUESTION)).json()
        events = sse_events(chat(client, user(QUESTION), stream=True))
    assert body["choices"][0]["message"]["content"] == "The documents do not cover this question."
    assert body["citations"] == [] and body["qa"]["abstained"]
    last = json.loads(events[-2])
    assert last["citations"] == [] and last["qa"]["abstained"]


def test_top_k_extension_and_unknown_openai_options(client: TestClient) -> None:
    body = chat(client, user(QUESTION), top_k=1, temperature=0.2, max_tokens=50).json()
    assert [c["marker"] for c in body["citations"]] == [1]


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        ({"model": "qa", "messages": []}, 422, ["messages is empty"]),
        ({"model": "qa"}, 422, ["messages", "required"]),
        ({"model": "qa", "messages": [{"role": "system", "content": "hi"}]}, 422,
         ["role 'user'"]),
        ({"model": "qa", "messages": [{"role": "tool", "content": "x"}]}, 422,
         ["messages[0].role", "'tool'", "'user'"]),
        ({"model": "qa", "messages": [{"role": "user", "content": "   "}]}, 422,
         ["messages[0].content is empty"]),
        ({"model": "qa", "messages": [{"role": "user"}]}, 422, ["messages[0].content"]),
        ({"model": "qa", "messages": [user("a"), user("")]}, 422, ["messages[1].content"]),
        ({"model": "qa", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 422,
         ["messages[0].content[0]", "'image_url'", "text"]),
        ({"model": "qa", "messages": [{"content": "hi"}]}, 422, ["role", "required"]),
        ({"model": "qa", "messages": "hello"}, 422, ["messages"]),
        ({"model": "qa", "messages": [user("x" * 2001)]}, 422, ["2000"]),
        ({"model": "qa", "messages": [user("ok")], "top_k": 0}, 422, ["top_k"]),
        ({"model": "gpt-4o", "messages": [user("ok")]}, 404, ["gpt-4o", "'qa'"]),
    ],
)  # fmt: skip
def test_bad_requests_get_the_one_error_shape(
    client: TestClient, payload: dict, status: int, words: list[str]
) -> None:
    assert_error(client.post("/v1/chat/completions", json=payload), status, *words)
    payload = {**payload, "stream": True}
    assert_error(client.post("/v1/chat/completions", json=payload), status, *words)


def test_reply_needs_a_user_turn(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="role 'user'"):
        reply(engine, [Turn("assistant", "hello")])


def test_source_line_names_title_path_lines_and_page() -> None:
    c = Citation(
        doc_id="a.pdf", title="Annual report", path="reports/a.pdf", start=0, end=9,
        line_start=3, line_end=7, page=2, sha256="0" * 64,
    )  # fmt: skip
    assert source_line(2, c) == "[2] Annual report — reports/a.pdf, lines 3-7, page 2"
    same = c.model_copy(update={"title": "reports/a.pdf", "line_end": 3, "page": None})
    assert source_line(1, same) == "[1] reports/a.pdf, line 3"


# ------------------------------------------- follow-ups into the answer (printers case)

CASE = Path(__file__).parent / "data" / "cases" / "followup-into-answer"
PRINTER_QUESTION = "Which toner does the printer on floor 5 use?"


def printer_engine(tmp_path: Path, fake_embedder) -> Engine:
    """An index of the followup-into-answer case (fake embedder)."""
    corpus = tmp_path / "printers"
    shutil.copytree(CASE, corpus)
    settings = Settings(
        corpus_dir=corpus,
        index_dir=tmp_path / "printers-index",
        cache_dir=tmp_path / "cache",
        embedding_model="fake-embedder",
        min_score=0.05,
        allowed_hosts=["testserver"],  # Starlette's TestClient sends Host: testserver
    )
    build_index(corpus, settings.index_dir, fake_embedder, spec_from_settings(settings))
    engine = Engine(settings, embedder=fake_embedder)
    engine.load()
    return engine


@pytest.fixture
def printers(tmp_path: Path, fake_embedder) -> Engine:
    return printer_engine(tmp_path, fake_embedder)


@pytest.mark.parametrize(
    "history",
    [
        [],  # the client sent no assistant message
        ["The printer on floor 5 uses toner cartridge CF-259X. [1]\n\nSources:\n- [1] x"],
        ["According to the documents, it is a cartridge. [1]"],  # a model's wording
        ["The documents do not cover this question."],
    ],
    ids=["no-reply", "extractive-reply", "model-reply", "abstained-reply"],
)
def test_a_follow_up_that_points_back_answers_about_floor_5(
    printers: Engine, history: list[str]
) -> None:
    turns = [Turn("user", PRINTER_QUESTION)]
    turns += [Turn("assistant", h) for h in history]
    answer = reply(printers, [*turns, Turn("user", "how do I restart it?")])
    assert answer.answer == "Restart it by unplugging it for ten seconds. [1]"
    assert answer.rewrite.kind == "anaphora" and answer.rewrite.focus == "how do I restart it?"
    assert {"floor", "5", "CF-259X"} <= set(answer.rewrite.query.split())
    assert "## Floor 5" in answer.citations[0].text


def test_found_answers_adds_the_previous_turns_answer_only_for_pointing_follow_ups(
    printers: Engine,
) -> None:
    turns = [Turn("user", PRINTER_QUESTION), Turn("assistant", "Ok. [1]"), Turn("user", "why?")]
    answers = assistant_answers(turns)
    assert answers == ["Ok.", ""]
    found = found_answers(printers, [PRINTER_QUESTION, "why?"], answers)
    assert found == ["Ok.\nThe printer on floor 5 uses toner cartridge CF-259X. [1]", ""]
    standalone = [PRINTER_QUESTION, "Which toner does the printer on floor 3 use?"]
    assert found_answers(printers, standalone, answers) == answers
