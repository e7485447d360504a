"""Answer synthesis against a real OpenAI-compatible HTTP server started by the test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from qa.engine import Engine
from qa.http import create_app
from qa.schema import Passage
from qa.settings import Settings
from qa.synthesis import (
    REWRITE_PROMPT,
    Synthesizer,
    build_messages,
    build_rewrite_messages,
    clean_markers,
)
from tests.llm_server import (
    LLMServer,
    Reply,
    cites_passage_one_and_invents_seven,
    completion,
    is_rewrite,
    passages_in,
    rewrites_to,
)
from tests.test_chat import printer_engine

QUESTION = "how long does the dough proof"


@pytest.mark.parametrize(
    ("text", "valid", "cleaned", "cited"),
    [
        ("A [1]. B [2].", 3, "A [1]. B [2].", [1, 2]),
        ("A [1]. B [7].", 3, "A [1]. B.", [1]),
        ("A [7] and B [1].", 3, "A and B [1].", [1]),
        ("A [1, 7, 2].", 3, "A [1][2].", [1, 2]),
        ("A [1][1] [0].", 3, "A [1][1].", [1]),
        ("Nothing cited [4].", 3, "Nothing cited.", []),
        ("Dates like [2022] are not markers of passage 2022.", 5, "Dates like are not markers "
         "of passage 2022.", []),
    ],
)  # fmt: skip
def test_clean_markers_keeps_only_retrieved_passages(
    text: str, valid: int, cleaned: str, cited: list[int]
) -> None:
    assert clean_markers(text, valid) == (cleaned, cited)


@pytest.fixture
def passages(engine: Engine) -> list[Passage]:
    return engine.ask(QUESTION, 3).passages


def llm_settings(settings: Settings, url: str, **extra: object) -> Settings:
    values = {"llm_base_url": url, "llm_model": "tiny", "llm_timeout": 2.0, **extra}
    return Settings(**(settings.model_dump() | values))


def test_the_model_sees_only_the_numbered_passages_and_the_question(
    settings: Settings, passages: list[Passage]
) -> None:
    messages = build_messages(QUESTION, passages, earlier=["what is a starter"])
    prompt = messages[-1]["content"]
    for p in passages:
        assert f"[{p.rank}] " in prompt and p.text.strip() in prompt
    assert prompt.endswith(f"Question: {QUESTION}")
    assert "what is a starter" in prompt
    assert "only the numbered passages" in messages[0]["content"]


def test_an_invented_marker_is_removed(settings: Settings, passages: list[Passage]) -> None:
    with LLMServer(cites_passage_one_and_invents_seven).running() as llm:
        synth = Synthesizer(llm_settings(settings, llm.url))
        result = synth.write(QUESTION, passages)
    assert result is not None
    first_line = passages[0].text.split("\n")[0]
    assert result.text == (
        f"According to the documents, {first_line} [1]. Other sources agree. See also [2]."
    )
    assert result.cited == [1, 2] and result.model == "tiny"
    sent = llm.requests[0]
    assert sent["model"] == "tiny" and sent["stream"] is False
    assert passages_in(sent)[1] == first_line


def test_the_api_key_is_sent_as_a_bearer_token(settings: Settings, passages: list[Passage]) -> None:
    with LLMServer(cites_passage_one_and_invents_seven).running() as llm:
        Synthesizer(llm_settings(settings, llm.url, llm_api_key="s3cret")).write(QUESTION, passages)
    assert llm.headers[0]["Authorization"] == "Bearer s3cret"


def slow(_: dict) -> Reply:
    return Reply(body=completion("too late [1]").body, delay=3.0)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (slow, "did not answer within 0.5s"),
        (lambda _: Reply(200, b"<html>502 Bad Gateway</html>"), "not an OpenAI chat completion"),
        (lambda _: Reply(200, b'{"result": "Dough proofs overnight [1]"}'), "not an OpenAI"),
        (lambda _: Reply(200, b'{"choices": []}'), "not an OpenAI chat completion"),
        (lambda _: completion(""), "the answer is empty"),
        (lambda _: completion("I believe it is about eight hours."), "cites no retrieved"),
        (lambda _: completion("Eight hours [4][5]."), "cites no retrieved"),
        (lambda _: Reply(500, b'{"error": "model not loaded"}'), "HTTP 500"),
    ],
    ids=["timeout", "html", "json-without-choices", "no-choices", "empty", "uncited",
         "only-invented-markers", "http-500"],
)  # fmt: skip
def test_unusable_answers_fall_back_and_say_why(
    settings: Settings,
    passages: list[Passage],
    caplog: pytest.LogCaptureFixture,
    behaviour,
    reason: str,
) -> None:
    with LLMServer(behaviour).running() as llm:
        synth = Synthesizer(llm_settings(settings, llm.url, llm_timeout=0.5))
        with caplog.at_level(logging.WARNING, logger="qa.synthesis"):
            assert synth.write(QUESTION, passages) is None
    assert reason in caplog.text and "extractive answer" in caplog.text


def test_an_unreachable_server_falls_back(
    settings: Settings, passages: list[Passage], caplog: pytest.LogCaptureFixture
) -> None:
    server = LLMServer(cites_passage_one_and_invents_seven)
    url = server.url  # bound, never served: connection refused once closed
    server._server.server_close()
    with caplog.at_level(logging.WARNING, logger="qa.synthesis"):
        assert Synthesizer(llm_settings(settings, url)).write(QUESTION, passages) is None
    assert "failed" in caplog.text


# ---------------------------------------------------------------- through the chat endpoint


@pytest.fixture
def chat_with_llm(engine: Engine) -> Iterator[tuple[TestClient, LLMServer]]:
    with LLMServer(cites_passage_one_and_invents_seven).running() as llm:
        settings = llm_settings(engine.settings, llm.url)
        with TestClient(create_app(settings, engine, load=False)) as client:
            yield client, llm


def ask_chat(client: TestClient, question: str, stream: bool = False):
    return client.post(
        "/v1/chat/completions",
        json={"model": "qa", "messages": [{"role": "user", "content": question}], "stream": stream},
    )


def test_chat_answer_written_by_the_model_with_valid_citations_only(chat_with_llm) -> None:
    client, llm = chat_with_llm
    body = ask_chat(client, QUESTION).json()
    content = body["choices"][0]["message"]["content"]
    assert content.startswith("According to the documents, ")
    assert "[7]" not in content and "[9]" not in content
    assert "Other sources agree." in content
    assert [c["marker"] for c in body["citations"]] == [1, 2]
    assert "Sources:\n- [1] " in content and "\n- [2] " in content and "- [3]" not in content
    assert body["qa"]["written_by"] == "llm:tiny"
    assert "synthesis" in body["qa"]["timings_ms"]
    assert len(llm.requests) == 1


def test_chat_does_not_ask_the_model_when_the_documents_do_not_cover_it(
    engine: Engine,
) -> None:
    with LLMServer(cites_passage_one_and_invents_seven).running() as llm:
        settings = llm_settings(engine.settings, llm.url, min_score=0.99)
        engine.settings = settings  # the engine abstains below min_score
        with TestClient(create_app(settings, engine, load=False)) as client:
            body = ask_chat(client, QUESTION).json()
    assert body["choices"][0]["message"]["content"] == "The documents do not cover this question."
    assert body["citations"] == [] and body["qa"]["abstained"]
    assert llm.requests == []


def test_chat_falls_back_to_the_extractive_answer_on_timeout(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with LLMServer(slow).running() as llm:
        settings = llm_settings(engine.settings, llm.url, llm_timeout=0.5)
        with (
            TestClient(create_app(settings, engine, load=False)) as client,
            caplog.at_level(logging.WARNING, logger="qa.synthesis"),
        ):
            body = ask_chat(client, QUESTION).json()
    extractive = engine.ask(QUESTION).answer
    assert extractive is not None
    assert body["choices"][0]["message"]["content"].startswith(extractive.text + "\n\nSources:")
    assert body["qa"]["written_by"] == "extractive"
    assert "did not answer within 0.5s" in caplog.text


# ---------------------------------------------------------------- rewriting a follow-up

PRINTER_QUESTION = "Which toner does the printer on floor 5 use?"
PRINTER_ANSWER = "The printer on floor 5 uses toner cartridge CF-259X."
FOLLOW_UP = "how do I restart it?"
STANDALONE = "How do I restart the printer on floor 5?"


def test_the_rewrite_prompt_holds_the_conversation_and_the_last_question() -> None:
    messages = build_rewrite_messages([PRINTER_QUESTION], [PRINTER_ANSWER], FOLLOW_UP)
    assert messages[0] == {"role": "system", "content": REWRITE_PROMPT}
    assert messages[1]["content"] == (
        f"Conversation:\nUser: {PRINTER_QUESTION}\nAssistant: {PRINTER_ANSWER}\n\n"
        f"Last question: {FOLLOW_UP}"
    )


@pytest.mark.parametrize(
    ("reply", "standalone"),
    [
        (STANDALONE, STANDALONE),
        (f'"{STANDALONE}"', STANDALONE),
        (f"Standalone question: {STANDALONE}\n", STANDALONE),
    ],
)
def test_the_model_rewrites_a_follow_up(settings: Settings, reply: str, standalone: str) -> None:
    with LLMServer(lambda _: completion(reply)).running() as llm:
        synth = Synthesizer(llm_settings(settings, llm.url))
        assert synth.standalone([PRINTER_QUESTION], [PRINTER_ANSWER], FOLLOW_UP) == standalone
    (sent,) = llm.requests
    assert sent["model"] == "tiny" and sent["temperature"] == 0
    assert sent["messages"] == build_rewrite_messages(
        [PRINTER_QUESTION], [PRINTER_ANSWER], FOLLOW_UP
    )


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (slow, "no answer within 0.5s"),
        (lambda _: Reply(500, b'{"error": "model not loaded"}'), "HTTP 500"),
        (lambda _: Reply(200, b"<html>502 Bad Gateway</html>"), "not an OpenAI chat completion"),
        (lambda _: completion("   "), "the answer is empty"),
        (lambda _: completion('"" ...'), "holds no words"),
        (lambda _: completion(f"{STANDALONE}\nI rewrote 'it' as the printer."), "more than one"),
        (lambda _: completion("restart " * 400), "over 2000"),
    ],
    ids=["timeout", "http-500", "html", "empty", "no-words", "two-lines", "too-long"],
)  # fmt: skip
def test_an_unusable_rewrite_returns_none_and_says_why(
    settings: Settings, caplog: pytest.LogCaptureFixture, behaviour, reason: str
) -> None:
    with LLMServer(behaviour).running() as llm:
        synth = Synthesizer(llm_settings(settings, llm.url, llm_timeout=0.5))
        with caplog.at_level(logging.WARNING, logger="qa.synthesis"):
            assert synth.standalone([PRINTER_QUESTION], [PRINTER_ANSWER], FOLLOW_UP) is None
    assert reason in caplog.text and "using the rule-based rewrite" in caplog.text


@pytest.fixture
def printers(tmp_path, fake_embedder) -> Engine:
    return printer_engine(tmp_path, fake_embedder)


def printer_chat(client: TestClient) -> dict:
    first = client.post(
        "/v1/chat/completions",
        json={"model": "qa", "messages": [{"role": "user", "content": PRINTER_QUESTION}]},
    ).json()
    assert "choices" in first, first
    messages = [
        {"role": "user", "content": PRINTER_QUESTION},
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": FOLLOW_UP},
    ]
    response = client.post("/v1/chat/completions", json={"model": "qa", "messages": messages})
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_follow_up_is_rewritten_by_the_model(printers: Engine) -> None:
    with LLMServer(rewrites_to(STANDALONE)).running() as llm:
        settings = llm_settings(printers.settings, llm.url)
        with TestClient(create_app(settings, printers, load=False)) as client:
            body = printer_chat(client)
    rewrites = [r for r in llm.requests if is_rewrite(r)]
    assert len(rewrites) == 1  # the first question stands alone: no rewrite asked
    prompt = rewrites[0]["messages"][-1]["content"]
    assert f"User: {PRINTER_QUESTION}\nAssistant: According to the documents, " in prompt
    assert "Sources:" not in prompt and prompt.endswith(f"Last question: {FOLLOW_UP}")
    qa = body["qa"]
    assert (qa["query"], qa["rewritten_by"], qa["follow_up"]) == (
        STANDALONE,
        "llm:tiny",
        "anaphora",
    )
    assert "rewrite" in qa["timings_ms"]
    (cited, *_) = body["citations"]
    assert cited["citation"]["line_start"] >= 7  # the floor 5 section


@pytest.mark.parametrize(
    "behaviour",
    [
        rewrites_to("Sure! Here is the question:\nHow do I restart the printer on floor 5?"),
        lambda r: Reply(500, b"{}") if is_rewrite(r) else cites_passage_one_and_invents_seven(r),
        lambda r: slow(r) if is_rewrite(r) else cites_passage_one_and_invents_seven(r),
    ],
    ids=["garbage", "error", "timeout"],
)
def test_chat_falls_back_to_the_rule_based_rewrite(
    printers: Engine, behaviour, caplog: pytest.LogCaptureFixture
) -> None:
    with LLMServer(behaviour).running() as llm:
        settings = llm_settings(printers.settings, llm.url, llm_timeout=0.5)
        with (
            TestClient(create_app(settings, printers, load=False)) as client,
            caplog.at_level(logging.WARNING, logger="qa.synthesis"),
        ):
            body = printer_chat(client)
    assert "using the rule-based rewrite" in caplog.text
    qa = body["qa"]
    assert qa["rewritten_by"] == "rules" and qa["follow_up"] == "anaphora"
    assert qa["query"].startswith(FOLLOW_UP) and {"printer", "floor", "5"} <= set(
        qa["query"].split()
    )


def test_the_rewrite_can_be_switched_off(printers: Engine) -> None:
    with LLMServer(rewrites_to(STANDALONE)).running() as llm:
        settings = llm_settings(printers.settings, llm.url, llm_rewrite=False)
        with TestClient(create_app(settings, printers, load=False)) as client:
            body = printer_chat(client)
    assert not any(is_rewrite(r) for r in llm.requests)
    assert body["qa"]["rewritten_by"] == "rules"
