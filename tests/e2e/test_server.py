"""The real model through the real server and CLI, on the default corpus."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from bench.questions import evidence_rank, read_jsonl
from tests.conftest import ROOT
from tests.e2e.conftest import Server, run_qa

pytestmark = pytest.mark.e2e

QUESTIONS = read_jsonl(ROOT / "eval" / "nato" / "questions.jsonl")
OFFTOPIC = read_jsonl(ROOT / "eval" / "nato" / "offtopic.jsonl")
NATO_EVIDENCE = (
    "important for NATO, given that developments in that region can directly affect "
    "Euro-Atlantic security"
)


def ask(server: Server, question: str, top_k: int = 5) -> dict:
    resp = httpx.post(
        f"{server.url}/v1/ask", json={"question": question, "top_k": top_k}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_nato_question_gets_the_strategic_concept_passage_first(server: Server) -> None:
    body = ask(server, "why is NATO engaging the Indo-Pacific")
    first = body["passages"][0]
    assert NATO_EVIDENCE in first["text"]
    assert not body["abstained"]
    citation = first["citation"]
    assert citation["doc_id"] == "nato-indo-pacific.txt"
    text = (server.corpus / "nato-indo-pacific.txt").read_text("utf-8")
    assert text[citation["start"] : citation["end"]] == first["text"]
    lines = text.split("\n")
    assert (
        "\n".join(lines[citation["line_start"] - 1 : citation["line_end"]]).find(first["text"]) >= 0
    )
    highlighted = text[first["highlight"]["start"] : first["highlight"]["end"]]
    assert NATO_EVIDENCE in highlighted
    assert body["answer"]["text"] == f"{highlighted} [1]"
    assert body["index"]["generation"] >= 1


def test_reader_questions_rank_their_evidence_high(server: Server) -> None:
    ranks = [
        evidence_rank(ask(server, q["question"], 10)["passages"], q["evidence"]) for q in QUESTIONS
    ]
    misses = [(q["question"], r) for q, r in zip(QUESTIONS, ranks, strict=True) if not r or r > 3]
    assert not misses, misses
    rank1 = sum(r == 1 for r in ranks) / len(ranks)
    assert rank1 >= 0.75, ranks


def test_off_topic_questions_abstain_and_on_topic_ones_do_not(server: Server) -> None:
    for item in OFFTOPIC:
        body = ask(server, item["question"])
        assert body["abstained"], item["question"]
        assert body["answer"] is None
        assert "do not cover" in body["message"]
    for item in QUESTIONS:
        assert not ask(server, item["question"])["abstained"], item["question"]


def test_documents_over_http(server: Server) -> None:
    docs = httpx.get(f"{server.url}/v1/documents").json()
    assert [d["doc_id"] for d in docs] == ["nato-indo-pacific.txt"]
    doc = httpx.get(f"{server.url}/v1/documents/nato-indo-pacific.txt").json()
    assert doc["text"] == (server.corpus / "nato-indo-pacific.txt").read_text("utf-8")
    missing = httpx.get(f"{server.url}/v1/documents/missing.txt")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_bad_input_over_http(server: Server) -> None:
    resp = httpx.post(
        f"{server.url}/v1/ask", content="{oops", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "request body is not valid JSON"
    resp = httpx.post(f"{server.url}/v1/ask", json={"question": "", "top_k": 3})
    assert resp.status_code == 422 and "question" in resp.json()["error"]["message"]


def test_cli_ask_json_matches_the_api(server: Server) -> None:
    out = run_qa(server.env, "ask", "why is NATO engaging the Indo-Pacific", "--json")
    cli = json.loads(out.stdout)
    api = ask(server, "why is NATO engaging the Indo-Pacific")
    assert set(cli) == set(api)
    assert [p["citation"] for p in cli["passages"]] == [p["citation"] for p in api["passages"]]


def test_cli_readable_output_cites_and_highlights(server: Server) -> None:
    out = run_qa(server.env, "ask", "Which summit will measure progress?", "-k", "2")
    assert "Answer:" in out.stdout
    assert "nato-indo-pacific.txt:" in out.stdout
    assert "[1]" in out.stdout and "[2]" in out.stdout


def test_cli_status_reports_a_fresh_index(server: Server) -> None:
    status = json.loads(run_qa(server.env, "index", "status", "--json").stdout)
    assert status["state"] == "fresh"
    assert status["model"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert status["counts"]["documents"] == 1


def test_index_built_with_another_model_is_refused(server: Server, tmp_path: Path) -> None:
    env = dict(server.env, QA_EMBEDDING_MODEL="sentence-transformers/other-model")
    out = run_qa(env, "ask", "anything", check=False)
    assert out.returncode == 1
    assert "qa index build" in out.stderr and "other-model" in out.stderr


def test_cli_eval_json_on_a_small_beir_set(server: Server, tmp_path: Path) -> None:
    from tests.test_evaluation import write_dataset

    dataset = write_dataset(tmp_path / "ds", header=True)
    env = dict(server.env, QA_CACHE_DIR=str(tmp_path / "cache"))
    result = json.loads(run_qa(env, "eval", str(dataset), "--mode", "hybrid", "--json").stdout)
    assert set(result) == {
        "ndcg@10", "recall@100", "mrr@10", "queries", "docs", "mode", "store", "latency_ms"
    }  # fmt: skip
    assert result["queries"] == 2 and result["docs"] == 3 and result["mode"] == "hybrid"
    assert result["store"] == "faiss"
    assert result["ndcg@10"] == 1.0
    bad = run_qa(env, "eval", str(tmp_path / "nothing"), check=False)
    assert bad.returncode == 1 and "corpus.jsonl" in bad.stderr


def test_the_served_process_refuses_foreign_hosts_and_logs_request_ids(server: Server) -> None:
    """`qa serve` itself (not only the app in a test client): Host check, request id in
    the response and in its log, metrics after requests."""
    hostile = httpx.get(f"{server.url}/v1/documents", headers={"Host": "attacker.example"})
    assert hostile.status_code == 421
    assert hostile.json()["error"]["code"] == "misdirected_request"
    resp = httpx.get(f"{server.url}/v1/documents", headers={"X-Request-ID": "e2e-trace-1"})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "e2e-trace-1"
    port = server.url.rsplit(":", 1)[1]
    log = Path(server.env["QA_INDEX_DIR"]).parent / f"server-{port}.log"
    deadline = time.monotonic() + 10
    while "[e2e-trace-1]" not in log.read_text("utf-8", errors="replace"):
        assert time.monotonic() < deadline, "the request's log line never came"
        time.sleep(0.1)
    line = next(
        x for x in log.read_text("utf-8", errors="replace").splitlines() if "[e2e-trace-1]" in x
    )
    assert "GET '/v1/documents' 200" in line
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'qa_http_requests_total{method="GET",route="/v1/documents",status="200"}' in metrics
    assert 'qa_http_requests_total{method="GET",route="<unmatched>",status="421"}' in metrics
