"""Two `qa serve` processes on one Milvus Lite gRPC server (QA_VECTOR_STORE=milvus), the
real bundled model: both answer from the generation in service and switch, with no failed
request, within QA_RELOAD_INTERVAL + 1 s of `qa index update` publishing a new one."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.milvus_bm25 import lite_server
from bench.server import stop
from tests.conftest import DEFAULT_CORPUS
from tests.e2e.conftest import qa_env, run_qa, start_server

pytestmark = pytest.mark.e2e
RELOAD = 0.5


@pytest.fixture
def milvus_uri(tmp_path: Path) -> Iterator[str]:
    with lite_server(tmp_path / "milvus") as (uri, _):
        yield uri


def ask(url: str, question: str) -> dict:  # type: ignore[type-arg]
    response = httpx.post(f"{url}/v1/ask", json={"question": question}, timeout=30)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def test_two_servers_on_one_milvus_switch_together(tmp_path: Path, milvus_uri: str) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(DEFAULT_CORPUS, corpus)
    env = qa_env(
        corpus,
        tmp_path / "index",
        QA_VECTOR_STORE="milvus",
        QA_MILVUS_URI=milvus_uri,
        QA_RELOAD_INTERVAL=str(RELOAD),
    )
    run_qa(env, "index", "build")  # into Milvus; raises if it fails
    servers = [start_server(env, "--no-build"), start_server(env, "--no-build")]
    urls = [url for url, _ in servers]
    try:
        for url in urls:
            assert ask(url, "Why is NATO engaging the Indo-Pacific?")["index"]["generation"] == 1

        failures: list[str] = []
        stop_load = threading.Event()

        def load(url: str) -> None:
            while not stop_load.is_set():
                try:
                    ask(url, "How does NATO regard China?")
                except Exception as exc:  # any failed request fails the test
                    failures.append(f"{url}: {exc!r}")

        threads = [threading.Thread(target=load, args=(u,), daemon=True) for u in urls]
        for t in threads:
            t.start()
        (corpus / "kilns.md").write_text(
            "# Kilns\n\nA pottery kiln fires stoneware clay at 1200 degrees Celsius.\n",
            encoding="utf-8",
        )
        updated = run_qa(env, "index", "update", "--json", check=False)
        published = time.monotonic()
        assert updated.returncode == 0, updated.stdout + updated.stderr[-3000:]
        assert '"generation": 2' in updated.stdout, updated.stdout
        switched: dict[str, float] = {}
        while len(switched) < len(urls) and time.monotonic() - published < RELOAD + 10:
            for url in urls:
                if url not in switched:
                    sent = time.monotonic()  # the server had switched when this was sent
                    body = ask(url, "At what temperature does a kiln fire stoneware?")
                    if body["index"]["generation"] == 2:
                        assert body["passages"][0]["citation"]["doc_id"] == "kilns.md"
                        switched[url] = sent - published
            time.sleep(0.05)
        stop_load.set()
        for t in threads:
            t.join(timeout=30)
        assert failures == []
        assert set(switched) == set(urls)
        assert max(switched.values()) <= RELOAD + 1, switched
    finally:
        for _, proc in servers:
            stop(proc)
