"""Observable: Prometheus /metrics, request ids on responses and in log lines, JSON logs,
a bounded update-job history."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from qa.engine import Engine
from qa.errors import NotFound
from qa.http import create_app
from qa.http.observe import configure_logging
from qa.settings import Settings
from qa.updater import Updater


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    engine.settings.admin_token = "s3cret"
    with TestClient(create_app(engine.settings, engine, load=False)) as c:
        yield c


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def wait_for_job(client: TestClient, job_id: str) -> dict:
    auth = {"Authorization": "Bearer s3cret"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/v1/index/jobs/{job_id}", headers=auth).json()["job"]
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    before = samples(client)
    for _ in range(3):
        assert client.post("/v1/ask", json={"question": "sourdough"}).status_code == 200
    assert client.get("/v1/documents/no/such.md").status_code == 404
    assert client.get("/v1/documents/notes/baking.md").status_code == 200
    assert client.get("/nowhere").status_code == 404
    after = samples(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("qa_http_requests_total", method="POST", route="/v1/ask", status="200") == 3
    doc = "/v1/documents/{doc_id:path}"
    assert grew("qa_http_requests_total", method="GET", route=doc, status="404") == 1
    assert grew("qa_http_requests_total", method="GET", route=doc, status="200") == 1
    assert grew("qa_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert grew("qa_http_request_seconds_count", method="POST", route="/v1/ask") == 3
    assert grew("qa_stage_seconds_count", stage="embed") == 3
    assert grew("qa_stage_seconds_count", stage="search") == 3
    assert ("qa_stage_seconds_count", frozenset({("stage", "rerank")})) in after
    assert ("qa_stage_seconds_count", frozenset({("stage", "synthesis")})) in after


def test_metrics_show_the_index_in_service(client: TestClient, engine: Engine) -> None:
    found = samples(client)
    assert value(found, "qa_index_ready") == 1
    assert value(found, "qa_index_generation") == engine.data.generation == 1
    assert value(found, "qa_index_documents") == len(engine.data.documents()) == 2
    assert value(found, "qa_index_chunks") == len(engine.data) > 0


def test_metrics_record_update_durations_throughput_and_failures(
    client: TestClient, engine: Engine
) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    corpus = Path(engine.settings.corpus_dir)
    before = samples(client)
    (corpus / "pasta.md").write_text("# Pasta\n\nCook the spaghetti for nine minutes.\n")
    job = client.post("/v1/index/update", headers=auth).json()["job"]
    assert wait_for_job(client, job["id"])["state"] == "succeeded"
    middle = samples(client)
    assert (
        value(middle, "qa_updates_total", outcome="succeeded")
        - value(before, "qa_updates_total", outcome="succeeded")
        == 1
    )
    assert value(middle, "qa_update_seconds_count") - value(before, "qa_update_seconds_count") == 1
    assert value(middle, "qa_build_chunks_per_second") > 0
    assert value(middle, "qa_index_generation") == 2

    shutil.rmtree(corpus)  # the next update cannot read its corpus
    job = client.post("/v1/index/update", headers=auth).json()["job"]
    assert wait_for_job(client, job["id"])["state"] == "failed"
    after = samples(client)
    assert value(after, "qa_update_failures_total") - value(middle, "qa_update_failures_total") == 1
    assert (
        value(after, "qa_updates_total", outcome="failed")
        - value(middle, "qa_updates_total", outcome="failed")
        == 1
    )
    assert value(after, "qa_index_generation") == 2, "the failed update changed nothing"


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        ("abc-123", True),
        ("req_7f3a.2:x", True),
        ("has spaces", False),
        ("x" * 200, False),
        ("new\nline", False),
    ],
)
def test_the_request_id_is_echoed_when_sane(client: TestClient, given: str, echoed: bool) -> None:
    try:
        resp = client.get("/healthz", headers={"X-Request-ID": given})
    except Exception:  # the HTTP client itself refuses a header with a line break
        assert not echoed
        return
    rid = resp.headers["x-request-id"]
    if echoed:
        assert rid == given
    else:
        assert rid != given and re.fullmatch(r"[0-9a-f]{32}", rid)


def test_every_response_gets_a_fresh_request_id(client: TestClient) -> None:
    ids = {client.get(path).headers["x-request-id"] for path in ("/healthz", "/nowhere", "/")}
    ids.add(client.post("/v1/ask", json={"question": ""}).headers["x-request-id"])
    assert len(ids) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The server's logging set up as `qa serve` does with QA_LOG_FORMAT=json, into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = configure_logging("json")
    buffer = io.StringIO()
    handler.setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_log_lines_carry_the_request_id(client: TestClient, json_log: io.StringIO) -> None:
    resp = client.get("/v1/documents/missing.md", headers={"X-Request-ID": "trace-42"})
    assert resp.status_code == 404
    client.post("/v1/ask", json={"question": "NATO"})
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    mine = [line for line in lines if line["request_id"] == "trace-42"]
    assert mine, lines
    access = mine[-1]
    assert access["logger"] == "qa.http.access"
    assert access["status"] == 404 and access["route"] == "/v1/documents/{doc_id:path}"
    assert access["method"] == "GET" and access["duration_ms"] >= 0
    assert {"time", "level", "message"} <= set(access)
    others = {line["request_id"] for line in lines if line["request_id"] != "trace-42"}
    assert others and all(re.fullmatch(r"[0-9a-f]{32}|-", i) for i in others)


def test_text_log_lines_carry_the_request_id(client: TestClient) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = configure_logging("text")
    buffer = io.StringIO()
    handler.setStream(buffer)  # type: ignore[attr-defined]
    try:
        client.get("/healthz", headers={"X-Request-ID": "plain-7"})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert re.search(r"INFO \[plain-7\] qa\.http\.access: GET '/healthz' 200", buffer.getvalue())


def test_the_update_job_history_is_bounded(settings: Settings, fake_embedder) -> None:
    updater = Updater(
        Path(settings.corpus_dir),
        Path(settings.index_dir),
        fake_embedder,
        Engine(settings, embedder=fake_embedder).spec,
        jobs_kept=2,
    )
    ids = []
    for _ in range(4):
        job = updater.start()
        ids.append(job.id)
        deadline = time.monotonic() + 60
        while job.state not in ("succeeded", "failed") or updater.running is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert job.state == "succeeded", job.error
    assert [updater.job(i).id for i in ids[2:]] == ids[2:]
    for old in ids[:2]:
        with pytest.raises(NotFound):
            updater.job(old)
    assert updater.last is not None and updater.last.id == ids[-1]
