"""Several server processes on one index folder: two `qa serve` on two ports, and one
`qa serve --workers 2`; all follow the generation in service, no request fails."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.server import free_port
from tests.conftest import DEFAULT_CORPUS
from tests.e2e.conftest import Server, qa_env, run_qa, start_server, stop

pytestmark = pytest.mark.e2e

RELOAD_INTERVAL = 1.0  # QA_RELOAD_INTERVAL, the default
ARTICLE = "nato-indo-pacific.txt"
ADDED = "\n\nThe Aletsch glacier, the longest in the Alps, is not a NATO member.\n"


def wait_until(predicate: Callable[[], bool], timeout: float = 120, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def generation(url: str) -> int:
    return int(httpx.get(f"{url}/v1/index", timeout=30).json()["generation"])


@dataclass
class Hammer:
    """Asks one server questions in a loop until stopped; records every outcome."""

    url: str
    generations: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    resp = client.post("/v1/ask", json={"question": "Who leads the talks?"})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if resp.status_code != 200:
                    self.failures.append(f"{resp.status_code} {resp.text[:200]}")
                else:
                    self.generations.append(resp.json()["index"]["generation"])

    def __enter__(self) -> Hammer:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(90)


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two `qa serve` processes on two ports, one corpus, ONE index folder (built once
    by `qa index build`; the servers only read it)."""
    root = tmp_path_factory.mktemp("two")
    corpus, index = root / "corpus", root / "index"
    shutil.copytree(DEFAULT_CORPUS, corpus)
    env = qa_env(corpus, index, QA_RELOAD_INTERVAL=str(RELOAD_INTERVAL))
    run_qa(env, "index", "build")
    servers: list[Server] = []
    try:
        for _ in range(2):
            url, proc = start_server(env, "--no-build")
            servers.append(Server(url, corpus, index, env, proc))
        yield servers
    finally:
        for server in servers:
            stop(server.process)


def test_two_servers_on_one_index_switch_together_without_failing(
    two_servers: list[Server],
) -> None:
    a, b = two_servers
    before = generation(a.url)
    assert generation(b.url) == before
    seen_at: dict[str, float] = {}

    def follow(url: str, target: int) -> None:
        # the moment this server first answers from the new generation (wall clock)
        deadline = time.monotonic() + 600  # the update runs beside it, on a busy machine
        while time.monotonic() < deadline:
            try:
                if generation(url) >= target:
                    seen_at[url] = time.time()
                    return
            except httpx.HTTPError:
                pass  # the hammer counts failures; this only watches
            time.sleep(0.05)

    with Hammer(a.url) as ha, Hammer(b.url) as hb:
        assert wait_until(lambda: len(ha.generations) >= 3 and len(hb.generations) >= 3)
        article = a.corpus / ARTICLE
        article.write_text(article.read_text("utf-8") + ADDED, "utf-8")
        followers = [threading.Thread(target=follow, args=(s.url, before + 1)) for s in two_servers]
        for t in followers:
            t.start()
        out = run_qa(a.env, "index", "update", "--json")
        assert json.loads(out.stdout)["generation"] == before + 1, out.stdout
        # the pointer's file was written just before it replaced the old one: publish time
        published = (a.index / "CURRENT").stat().st_mtime
        for t in followers:
            t.join(650)
        # both keep answering a while on the new generation
        assert wait_until(
            lambda: ha.generations[-1:] == [before + 1] and hb.generations[-1:] == [before + 1]
        )
    assert set(seen_at) == {a.url, b.url}, "a server never served the new generation"
    lags = {url: at - published for url, at in seen_at.items()}
    assert all(lag <= RELOAD_INTERVAL + 1 for lag in lags.values()), lags
    for hammer in (ha, hb):
        assert not hammer.failures, hammer.failures[:5]
        assert hammer.generations == sorted(hammer.generations), "went back a generation"
        assert hammer.generations[0] == before and hammer.generations[-1] == before + 1
    # both answer from the changed document's new text
    for server in two_servers:
        body = httpx.post(
            f"{server.url}/v1/ask",
            json={"question": "Which is the longest glacier in the Alps?", "top_k": 1},
            timeout=60,
        ).json()
        assert "Aletsch" in body["passages"][0]["text"]


def children(pid: int) -> list[int]:
    """Process ids of the children of ``pid`` that run a multiprocessing worker (Linux)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`qa serve --workers 2 --watch` on a corpus without an index yet."""
    root = tmp_path_factory.mktemp("workers")
    corpus, index = root / "corpus", root / "index"
    shutil.copytree(DEFAULT_CORPUS, corpus)
    env = qa_env(corpus, index, QA_RELOAD_INTERVAL="0.2", QA_WATCH_DEBOUNCE_MS="300")
    # a build, then two processes loading torch and the model at once: slow on 2 busy cores
    url, proc = start_server(env, "--workers", "2", "--watch", timeout=540)
    yield Server(url, corpus, index, env, proc)
    stop(proc)


def server_log(server: Server) -> str:
    port = server.url.rsplit(":", 1)[1]
    return (server.index.parent / f"server-{port}.log").read_text("utf-8", "replace")


def test_workers_serve_and_the_index_is_built_once(workers: Server) -> None:
    assert len(children(workers.process.pid)) == 2
    # the first start built one generation, before the workers started
    assert sorted(p.name for p in workers.index.glob("gen-*")) == ["gen-000001"]
    with httpx.Client(base_url=workers.url, timeout=60) as client:
        for _ in range(20):  # new connections: the kernel spreads them over both workers
            resp = client.post(
                "/v1/ask",
                json={"question": "why is NATO engaging the Indo-Pacific", "top_k": 1},
                headers={"Connection": "close"},
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["index"]["generation"] == 1
            assert body["passages"][0]["citation"]["doc_id"] == ARTICLE


def test_only_the_supervisor_watches_and_every_worker_switches(workers: Server) -> None:
    before = generation(workers.url)
    (workers.corpus / "glaciers.md").write_text(
        "# Glaciers\n\nThe Aletsch glacier is the largest in the Alps.\n", "utf-8"
    )

    def all_switched() -> bool:
        # "index generation N in service": once per worker that loaded it
        return len(re.findall(rf"generation {before + 1} in service", server_log(workers))) >= 2

    assert wait_until(all_switched), server_log(workers)[-3000:]
    log = server_log(workers)
    assert len(re.findall(r"change\(s\) in .*; updating the index", log)) == 1, log[-3000:]
    assert not re.search(r"index update \w+ failed", log), log[-3000:]
    with httpx.Client(base_url=workers.url, timeout=60) as client:
        for _ in range(10):
            resp = client.post(
                "/v1/ask",
                json={"question": "Which is the largest glacier in the Alps?", "top_k": 1},
                headers={"Connection": "close"},
            )
            assert resp.json()["index"]["generation"] == before + 1
            assert resp.json()["passages"][0]["citation"]["doc_id"] == "glaciers.md"


def test_the_docker_health_check_passes_on_a_ready_server_only(server: Server) -> None:
    """The Dockerfile's HEALTHCHECK command, run here against a real server."""
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text("utf-8")
    (code,) = re.findall(r'CMD python -c "(.*)"\n', dockerfile)
    here = code.replace("http://127.0.0.1:8000", server.url)
    ready = subprocess.run([sys.executable, "-c", here])
    assert ready.returncode == 0
    down = subprocess.run(
        [sys.executable, "-c", code.replace("127.0.0.1:8000", f"127.0.0.1:{free_port()}")],
        capture_output=True,
    )
    assert down.returncode != 0
