"""Issue 11, kinds 6-8, end to end with the real model: follow-ups that point into the
previous answer (chat endpoint), document text that cannot drive the terminal (`qa ask`),
MCP resources for document ids with #, ?, %, spaces and non-ASCII letters (HTTP and stdio).

One `qa serve` over a corpus of the case files (tests/data/cases) and odd-named files."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters

from tests.e2e.conftest import Server, qa_env, run_qa, start_server, stop
from tests.llm_server import LLMServer, rewrites_to

pytestmark = pytest.mark.e2e

CASES = Path(__file__).resolve().parent.parent / "data" / "cases"
ODD_FILES = {
    "odd/report#2.txt": "Report two covers the harbour crane inspection on pier nine.",
    "odd/what?.txt": "Open questions about the bicycle shed are listed here.",
    "odd/100%.txt": "Full coverage means every meeting room has a whiteboard.",
    "odd/a%41b.txt": "A percent triplet in a file name stays a percent sign.",
    "odd/my notes/q 1.md": "# Quarter one\n\nCanteen sales rose in the first quarter.",
    "odd/café/naïve résumé.txt": "The rooftop café opens at seven in summer.",
    "odd/日本語.txt": "大阪の倉庫は八時に開きます。",
}
BEIR_ROWS = [
    {"_id": "d1", "title": "Tulips", "text": "The tulip beds are replanted in October."},
    {"_id": "x y/../../z", "title": "Dots", "text": "A row id with dots is only an id."},
]
ODD_TEXTS = {
    **{name.removeprefix("odd/"): text + "\n" for name, text in ODD_FILES.items()},
    **{f"rows.jsonl#{r['_id']}": f"{r['title']}\n\n{r['text']}" for r in BEIR_ROWS},
}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture(scope="module")
def cases_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("cases")
    corpus = root / "corpus"
    shutil.copytree(CASES / "followup-into-answer", corpus)
    shutil.copytree(CASES / "terminal-escapes", corpus, dirs_exist_ok=True)
    for name, text in ODD_FILES.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text + "\n", encoding="utf-8")
    (corpus / "odd" / "rows.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in BEIR_ROWS), encoding="utf-8"
    )
    env = qa_env(corpus, root / "index")
    url, proc = start_server(env)
    yield Server(url, corpus, root / "index", env, proc)
    stop(proc)


# ---------------------------------------------------------------- 6. follow-ups


def chat(server: Server, messages: list[dict[str, str]]) -> dict:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "qa", "messages": messages},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def converse(server: Server, questions: list[str]) -> dict:
    """Each question in turn, the server's own replies sent back as the history."""
    messages: list[dict[str, str]] = []
    body: dict = {}
    for question in questions:
        messages.append({"role": "user", "content": question})
        body = chat(server, messages)
        messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
    return body


@pytest.mark.parametrize(
    ("floor", "other", "restart"),
    [("5", "3", "Restart it by unplugging it for ten seconds."),
     ("3", "5", "Restart it with the red button on the back.")],
)  # fmt: skip
def test_a_follow_up_answers_about_what_the_previous_turn_was_about(
    cases_server: Server, floor: str, other: str, restart: str
) -> None:
    question = f"Which toner does the printer on floor {floor} use?"
    body = converse(cases_server, [question, "how do I restart it?"])
    content = body["choices"][0]["message"]["content"]
    assert content.split("\n\nSources:\n")[0] == f"{restart} [1]", content
    (cited,) = body["citations"]
    assert cited["citation"]["path"] == "printers.md"
    assert f"## Floor {floor}" in cited["text"] and f"## Floor {other}" not in cited["text"]
    start, end = cited["citation"]["start"], cited["citation"]["end"]
    assert (cases_server.corpus / "printers.md").read_text("utf-8")[start:end] == cited["text"]
    assert body["qa"]["follow_up"] == "anaphora" and body["qa"]["rewritten_by"] == "rules"


STANDALONE = "How do I restart the printer on floor 5?"


@pytest.fixture(scope="module")
def llm_cases_server(cases_server: Server) -> Iterator[tuple[Server, LLMServer]]:
    """A second `qa serve` on the same index, with a test language model configured."""
    with LLMServer(rewrites_to(STANDALONE)).running() as llm:
        env = dict(cases_server.env, QA_LLM_BASE_URL=llm.url, QA_LLM_MODEL="tiny")
        url, proc = start_server(dict(env, QA_LLM_TIMEOUT="5"))
        try:
            yield Server(url, cases_server.corpus, cases_server.index, env, proc), llm
        finally:
            stop(proc)


@pytest.mark.parametrize(
    ("rewrite", "rewritten_by"),
    [(rewrites_to(STANDALONE), "llm:tiny"),
     (rewrites_to("Sure.\nHow do I restart the printer on floor 5?"), "rules")],
    ids=["model", "garbage-falls-back-to-rules"],
)  # fmt: skip
def test_with_a_language_model_the_follow_up_is_rewritten_by_it(
    llm_cases_server: tuple[Server, LLMServer], rewrite, rewritten_by: str
) -> None:
    server, llm = llm_cases_server
    llm.behaviour = rewrite
    body = converse(
        server, ["Which toner does the printer on floor 5 use?", "how do I restart it?"]
    )
    assert body["qa"]["rewritten_by"] == rewritten_by
    if rewritten_by == "rules":
        assert body["qa"]["query"].startswith("how do I restart it?")
    else:
        assert body["qa"]["query"] == STANDALONE
    assert body["qa"]["written_by"] == "llm:tiny"
    assert body["citations"][0]["marker"] == 1
    assert "## Floor 5" in body["citations"][0]["text"]
    assert "Restart it by unplugging it for ten seconds." in body["citations"][0]["text"]


# ---------------------------------------------------------------- 7. the terminal


VAULT_QUESTION = "When is the vault code changed?"


def test_qa_ask_prints_no_control_bytes_and_shows_the_text(cases_server: Server) -> None:
    env = dict(cases_server.env, COLUMNS="500")
    out = run_qa(env, "ask", VAULT_QUESTION, "-k", "1")
    assert not CONTROL.search(out.stdout) and not CONTROL.search(out.stderr)
    assert "Answer: The vault code is changed every Friday." in out.stdout
    assert "Ask the duty manager\\x1b[8m hidden text\\x1b[28m for the new code." in out.stdout
    assert "\\x1b]0;owned-title\\x1b\\" in out.stdout  # the title is shown, not set
    assert "\\x1b]8;;https://example.invalid/phish\\x1b\\the intranet page" in out.stdout
    assert "for details. [/] [bold]not markup[/bold] \\\n" in out.stdout  # one backslash


def test_qa_ask_on_a_colour_terminal_sends_only_its_own_styles(cases_server: Server) -> None:
    env = dict(cases_server.env, COLUMNS="500", FORCE_COLOR="1")
    out = run_qa(env, "ask", VAULT_QUESTION, "-k", "1").stdout
    assert "\x1b[" in out  # rich styles the output: this is a terminal to it
    styles_removed = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert not CONTROL.search(styles_removed)
    assert "[bold]not markup[/bold] \\\n" in styles_removed


# ---------------------------------------------------------------- 8. MCP resources


async def read_every_listed_resource(mcp: Client) -> dict[str, str]:
    listed = {r.name: r.uri for r in (await mcp.list_resources()).resources}
    texts = {}
    for doc_id, uri in listed.items():
        read = await mcp.read_resource(uri)
        texts[doc_id] = read.contents[0].text  # type: ignore[union-attr]
    return texts


def check_odd_ids(texts: dict[str, str], server: Server) -> None:
    for doc_id, text in ODD_TEXTS.items():
        assert texts[f"odd/{doc_id}"] == text, doc_id
    assert texts["vault.txt"] == (server.corpus / "vault.txt").read_text("utf-8")
    assert len(texts) == len(ODD_TEXTS) + 2


def test_mcp_reads_every_resource_over_http(cases_server: Server) -> None:
    async def main() -> dict[str, str]:
        async with Client(f"{cases_server.url}/mcp") as mcp:
            return await read_every_listed_resource(mcp)

    check_odd_ids(anyio.run(main), cases_server)


def test_mcp_reads_every_resource_over_stdio(cases_server: Server) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "qa", "mcp"], env=cases_server.env
    )

    async def main() -> dict[str, str]:
        async with Client(params) as mcp:
            return await read_every_listed_resource(mcp)

    check_odd_ids(anyio.run(main), cases_server)
