"""A running server picks up new generations without failing requests; --watch updates."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_CORPUS
from tests.e2e.conftest import Server, qa_env, run_qa, start_server, stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("live")
    corpus = root / "corpus"
    shutil.copytree(DEFAULT_CORPUS, corpus)
    env = qa_env(
        corpus,
        root / "index",
        QA_ADMIN_TOKEN="t0ken",
        QA_WATCH_DEBOUNCE_MS="300",
        QA_RELOAD_INTERVAL="0.2",
    )
    url, proc = start_server(env, "--watch")
    yield Server(url, corpus, root / "index", env, proc)
    stop(proc)


def wait_for(predicate, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def reload_failures(server: Server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("qa_reload_failures_total "):
            return float(line.split()[1])
    raise AssertionError("qa_reload_failures_total is not in /metrics")


def generation(server: Server) -> int:
    return int(httpx.get(f"{server.url}/v1/index").json()["generation"])


def test_queries_never_fail_while_generations_swap(watched: Server) -> None:
    failures: list[str] = []
    seen: list[int] = []
    stop_flag = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=watched.url, timeout=30) as client:
            while not stop_flag.is_set():
                try:
                    resp = client.post("/v1/ask", json={"question": "Who leads the talks?"})
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")
                    else:
                        seen.append(resp.json()["index"]["generation"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        start = generation(watched)
        for i in range(3):
            (watched.corpus / f"swap-{i}.md").write_text(
                f"# Swap {i}\n\nThe swap number {i} document mentions penguins.\n", "utf-8"
            )
            target = start + i + 1
            assert wait_for(lambda t=target: generation(watched) >= t), f"no generation {target}"
    finally:
        stop_flag.set()
        thread.join(30)
    assert not failures, failures[:5]
    assert len(seen) > 20
    assert seen == sorted(seen), "a request never sees an older generation after a newer one"
    assert seen[-1] >= start + 3


def test_watch_picks_up_an_edit_and_citations_follow(watched: Server) -> None:
    path = watched.corpus / "glaciers.md"
    path.write_text("# Glaciers\n\nThe Aletsch glacier is the largest in the Alps.\n", "utf-8")

    def found() -> bool:
        body = httpx.post(
            f"{watched.url}/v1/ask", json={"question": "Which is the largest glacier in the Alps?"}
        ).json()
        return body["passages"][0]["citation"]["doc_id"] == "glaciers.md"

    assert wait_for(found), "the watched edit never reached search"
    doc = httpx.get(f"{watched.url}/v1/documents/glaciers.md").json()
    assert doc["text"] == path.read_text("utf-8")


def test_cli_update_of_an_unchanged_corpus_embeds_nothing(watched: Server) -> None:
    assert wait_for(
        lambda: httpx.get(f"{watched.url}/v1/index").json()["update"]["running"] is None
    )
    out = run_qa(watched.env, "index", "update", "--wait")
    assert "up to date" in out.stdout


def test_admin_update_over_http(watched: Server) -> None:
    denied = httpx.post(f"{watched.url}/v1/index/update")
    assert denied.status_code == 401
    resp = httpx.post(f"{watched.url}/v1/index/update", headers={"Authorization": "Bearer t0ken"})
    assert resp.status_code == 202
    job_id = resp.json()["job"]["id"]

    def done() -> bool:
        job = httpx.get(
            f"{watched.url}/v1/index/jobs/{job_id}", headers={"Authorization": "Bearer t0ken"}
        ).json()["job"]
        return job["state"] in ("succeeded", "failed")

    assert wait_for(done)


def test_corrupted_generation_is_not_served(watched: Server, tmp_path: Path) -> None:
    before = generation(watched)
    index = watched.index
    current = (index / "CURRENT").read_text().strip()
    # a broken copy of the current generation, named as the next one and put in service:
    # its manifest names a copy of a segment whose vectors file is truncated
    broken = index / f"gen-{before + 100:06d}"
    shutil.copytree(index / current, broken)
    manifest = json.loads((broken / "manifest.json").read_text("utf-8"))
    name, checksum = next(iter(manifest["segments"].items()))
    shutil.copytree(index / "segments" / name, index / "segments" / "seg-999999")
    vectors = index / "segments" / "seg-999999" / "vectors.faiss"
    vectors.write_bytes(vectors.read_bytes()[:100])
    manifest["segments"] = {"seg-999999": checksum}
    for meta in manifest["documents"].values():
        meta["segment"] = "seg-999999"
    (broken / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    failures = reload_failures(watched)
    (index / "CURRENT").write_text(broken.name + "\n")
    # the server found the new generation, failed to load it, and says so in its metrics
    assert wait_for(lambda: reload_failures(watched) == failures + 1, timeout=30)
    body = httpx.post(f"{watched.url}/v1/ask", json={"question": "NATO"}).json()
    assert body["index"]["generation"] == before, "the server kept the good generation"
    (index / "CURRENT").write_text(current + "\n")
    shutil.rmtree(broken)
    shutil.rmtree(index / "segments" / "seg-999999")
