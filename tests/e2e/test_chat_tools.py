"""Chat tools against the real server and model: the openai client, MCP over HTTP and stdio."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import anyio
import httpx
import openai
import pytest
from mcp import Client, StdioServerParameters

from tests.e2e.conftest import Server, run_qa, start_server, stop
from tests.e2e.test_server import NATO_EVIDENCE
from tests.llm_server import LLMServer, cites_passage_one_and_invents_seven

pytestmark = pytest.mark.e2e

LEAD = "Which countries lead the partnership talks with NATO?"
SOUTH_KOREA = (
    "South Korea and New Zealand are also working to complete their separate agreements "
    "with the alliance."
)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0)


def answer_part(content: str) -> str:
    return content.split("\n\nSources:\n")[0]


def converse(client: openai.OpenAI, questions: list[str]):
    """Ask each question in turn, sending the server's own replies back as history."""
    messages: list[dict] = []
    response = None
    for question in questions:
        messages.append({"role": "user", "content": question})
        response = client.chat.completions.create(model="qa", messages=messages)  # type: ignore[arg-type]
        messages.append({"role": "assistant", "content": response.choices[0].message.content})
    assert response is not None
    return response


def test_models_through_the_openai_client(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["qa"]


def test_answer_with_markers_sources_and_citations(client: openai.OpenAI, server: Server) -> None:
    response = client.chat.completions.create(
        model="qa", messages=[{"role": "user", "content": "why is NATO engaging the Indo-Pacific"}]
    )
    content = response.choices[0].message.content
    assert content is not None
    ask = httpx.post(
        f"{server.url}/v1/ask", json={"question": "why is NATO engaging the Indo-Pacific"}
    ).json()
    first = ask["passages"][0]["citation"]
    assert answer_part(content) == ask["answer"]["text"]
    assert NATO_EVIDENCE in content and "[1]" in content
    assert content.endswith(
        f"Sources:\n- [1] {first['title']} — {first['path']}, "
        f"lines {first['line_start']}-{first['line_end']}"
    )
    extra = response.model_extra or {}
    assert extra["citations"] == [
        {"marker": 1, "citation": first, "text": ask["passages"][0]["text"]}
    ]
    text = (server.corpus / first["path"]).read_text("utf-8")
    assert text[first["start"] : first["end"]] == extra["citations"][0]["text"]


def test_streaming_gives_the_same_reply_and_citations_last(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Which summit will measure progress?"}]
    whole = client.chat.completions.create(model="qa", messages=messages)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="qa", messages=messages, stream=True))  # type: ignore[arg-type]
    assert len(chunks) > 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert "Vilnius summit" in text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (chunks[-1].model_extra or {})["citations"] == (whole.model_extra or {})["citations"]


def test_south_korea_follow_up_finds_its_agreement(client: openai.OpenAI) -> None:
    response = converse(client, [LEAD, "and what about South Korea?"])
    content = response.choices[0].message.content or ""
    assert answer_part(content) == f"{SOUTH_KOREA} [1]"
    qa = (response.model_extra or {})["qa"]
    assert qa["follow_up"] == "substitution"
    assert qa["query"].startswith("South Korea") and "partnership" in qa["query"]


# The follow-up alone does not find the evidence (the documents "do not cover" "where?");
# with the earlier question it does.
FOLLOW_UPS = [
    (["Which summit will measure progress?"], "and the Madrid one?",
     "the Madrid summit gave the four Indo-Pacific partners"),
    (["What did NATO previously do with Indo-Pacific nations?"], "where?",
     "the Balkans in the 1990s and Afghanistan in the 2000s"),
    (["What will the partnerships concentrate on?"], "and from a defense perspective?",
     "interoperability"),
    (["Is NATO going to station troops in the Indo-Pacific?"], "why not?",
     "does not imply that NATO military hardware or personnel will be stationed"),
]  # fmt: skip


@pytest.mark.parametrize(("history", "follow_up", "evidence"), FOLLOW_UPS)
def test_follow_ups_need_and_use_the_earlier_turns(
    client: openai.OpenAI, history: list[str], follow_up: str, evidence: str
) -> None:
    alone = converse(client, [follow_up]).choices[0].message.content or ""
    assert evidence not in alone
    content = converse(client, [*history, follow_up]).choices[0].message.content or ""
    assert evidence in answer_part(content), content


@pytest.mark.parametrize("follow_up", ["how so?", "why?", "tell me more"])
def test_an_ellipsis_stays_on_the_topic_of_the_question_before(
    client: openai.OpenAI, server: Server, follow_up: str
) -> None:
    question = "Why is NATO engaging the Indo-Pacific?"
    alone = converse(client, [follow_up])
    assert alone.choices[0].message.content == "The documents do not cover this question."
    response = converse(client, [question, follow_up])
    (cited,) = (response.model_extra or {})["citations"]
    before = httpx.post(f"{server.url}/v1/ask", json={"question": question, "top_k": 3}).json()
    assert cited["citation"] in [p["citation"] for p in before["passages"]]


@pytest.mark.parametrize(
    ("questions", "evidence"),
    [
        ([LEAD, "and what about South Korea?", "and New Zealand?"], SOUTH_KOREA),
        ([LEAD, "What have they agreed?"], "Individually Tailored Partnership Programme"),
        (["How does NATO now regard China's ambitions?", "and Russia?"],
         "China and Russia’s expanding cooperation"),
    ],
)  # fmt: skip
def test_longer_and_pronoun_follow_ups(
    client: openai.OpenAI, questions: list[str], evidence: str
) -> None:
    content = converse(client, questions).choices[0].message.content or ""
    assert evidence in answer_part(content), content


def test_off_topic_question_says_the_documents_do_not_cover_it(client: openai.OpenAI) -> None:
    response = converse(client, ["how do I bake sourdough bread"])
    assert response.choices[0].message.content == "The documents do not cover this question."
    assert (response.model_extra or {})["citations"] == []


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([], "messages is empty"),
        ([{"role": "system", "content": "be brief"}], "role 'user'"),
        ([{"role": "tool", "content": "x", "tool_call_id": "1"}], "messages[0].role"),
        ([{"role": "user", "content": ""}], "messages[0].content is empty"),
    ],
)
def test_bad_requests_surface_in_the_openai_client(
    client: openai.OpenAI, messages: list, words: str
) -> None:
    for stream in (False, True):
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.chat.completions.create(model="qa", messages=messages, stream=stream)
        assert words in caught.value.message
        assert caught.value.code == "invalid_request"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found" and "'qa'" in caught.value.message


# ---------------------------------------------------------------- language model synthesis


@pytest.fixture(scope="module")
def llm_server(server: Server) -> Iterator[tuple[str, LLMServer]]:
    """A second `qa serve` on the same index, writing answers with a test LLM server."""
    with LLMServer(cites_passage_one_and_invents_seven).running() as llm:
        env = dict(server.env, QA_LLM_BASE_URL=llm.url, QA_LLM_MODEL="tiny", QA_LLM_TIMEOUT="5")
        url, proc = start_server(env)
        try:
            yield url, llm
        finally:
            stop(proc)


def test_answer_written_by_the_configured_model(llm_server: tuple[str, LLMServer]) -> None:
    url, llm = llm_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
    response = client.chat.completions.create(
        model="qa", messages=[{"role": "user", "content": "Which summit will measure progress?"}]
    )
    content = response.choices[0].message.content or ""
    assert content.startswith("According to the documents, ")
    assert "[7]" not in content and "[9]" not in content
    assert "Other sources agree." in content and "See also [2]." in content
    extra = response.model_extra or {}
    assert [c["marker"] for c in extra["citations"]] == [1, 2]
    assert extra["qa"]["written_by"] == "llm:tiny"
    prompt = llm.requests[-1]["messages"][-1]["content"]
    assert "Vilnius summit" in prompt and prompt.endswith(
        "Question: Which summit will measure progress?"
    )


# ---------------------------------------------------------------- MCP


def test_mcp_over_http_on_the_live_server(server: Server) -> None:
    ask = httpx.post(
        f"{server.url}/v1/ask", json={"question": "Which summit will measure progress?", "top_k": 3}
    ).json()

    async def main() -> None:
        async with Client(f"{server.url}/mcp") as mcp:
            tools = {t.name for t in (await mcp.list_tools()).tools}
            assert tools == {"search", "get_document"}
            result = await mcp.call_tool(
                "search", {"question": "Which summit will measure progress?", "top_k": 3}
            )
            assert not result.is_error and result.structured_content is not None
            assert [p["citation"] for p in result.structured_content["passages"]] == [
                p["citation"] for p in ask["passages"]
            ]
            resources = (await mcp.list_resources()).resources
            assert [r.uri for r in resources] == ["qa://documents/nato-indo-pacific.txt"]
            read = await mcp.read_resource(resources[0].uri)
            corpus_text = (server.corpus / "nato-indo-pacific.txt").read_text("utf-8")
            assert read.contents[0].text == corpus_text  # type: ignore[union-attr]

    anyio.run(main)


def test_mcp_over_stdio_spawning_qa_mcp(server: Server) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "qa", "mcp"], env=server.env)

    async def main() -> None:
        async with Client(params) as mcp:
            assert mcp.server_info is not None and mcp.server_info.name == "qa"
            result = await mcp.call_tool("search", {"question": LEAD + " South Korea"})
            assert not result.is_error and result.structured_content is not None
            passages = result.structured_content["passages"]
            assert any(SOUTH_KOREA in p["text"] for p in passages)
            first = passages[0]["citation"]
            text = (server.corpus / first["path"]).read_text("utf-8")
            assert text[first["start"] : first["end"]] == passages[0]["text"]
            doc = await mcp.call_tool("get_document", {"doc_id": "nato-indo-pacific.txt"})
            assert doc.structured_content is not None
            assert doc.structured_content["text"] == text
            missing = await mcp.call_tool("get_document", {"doc_id": "nope.txt"})
            assert missing.is_error and "nope.txt" in missing.content[0].text  # type: ignore[union-attr]

    anyio.run(main)


def test_qa_mcp_without_an_index_says_how_to_build_one(server: Server, tmp_path) -> None:
    env = dict(server.env, QA_INDEX_DIR=str(tmp_path / "no-index"))
    out = run_qa(env, "mcp", check=False)
    assert out.returncode == 1
    assert "qa index build" in out.stderr
    assert out.stdout == ""  # stdout is the protocol's
