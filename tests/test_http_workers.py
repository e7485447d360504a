"""Start-up order of the app: the reload loop starts after the first load, and a worker of
`qa serve --workers` takes no request before its index is loaded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.engine import Engine
from qa.http import create_app
from qa.settings import Settings
from tests.fakes import FakeEmbedder


class GatedEmbedder(FakeEmbedder):
    """Embeds only once ``gate`` is set (the model still loading)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def embed(self, *args: Any, **kwargs: Any) -> Any:
        assert self.gate.wait(60), "the test never opened the gate"
        return super().embed(*args, **kwargs)


def built(settings: Settings) -> tuple[Settings, GatedEmbedder]:
    settings = settings.model_copy(update={"reload_interval": 0.02})
    build_index(
        Path(settings.corpus_dir),
        Path(settings.index_dir),
        FakeEmbedder(),
        spec_from_settings(settings),
    )
    return settings, GatedEmbedder()


def holds_for(condition: Callable[[], bool], seconds: float) -> bool:
    """True when ``condition`` stays true for ``seconds`` (many reload intervals)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.02)
    return True


def eventually(condition: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_not_ready_while_the_model_warms_up_even_with_an_index_on_disk(
    settings: Settings,
) -> None:
    settings, embedder = built(settings)
    engine = Engine(settings, embedder=embedder)
    with TestClient(create_app(settings, engine)) as client:
        # 50 reload intervals: a reload loop running beside the warm-up would have put
        # the index in service, and /readyz would say ready before the model could answer
        assert holds_for(lambda: client.get("/readyz").status_code == 503, 1.0)
        embedder.gate.set()
        assert eventually(lambda: client.get("/readyz").status_code == 200)
        assert client.post("/v1/ask", json={"question": "NATO"}).status_code == 200


def test_a_worker_starts_serving_only_once_its_index_is_loaded(settings: Settings) -> None:
    settings, embedder = built(settings)
    engine = Engine(settings, embedder=embedder)
    client = TestClient(create_app(settings, engine, wait_for_index=True))
    started = threading.Event()

    def start() -> None:
        client.__enter__()  # runs the lifespan's start-up
        started.set()

    threading.Thread(target=start, daemon=True).start()
    try:
        assert holds_for(lambda: not started.is_set(), 1.0), "start-up did not wait"
        embedder.gate.set()
        assert started.wait(30)
        # the first request it could take finds the index in service
        assert client.get("/readyz").status_code == 200
    finally:
        embedder.gate.set()
        if started.wait(30):
            client.__exit__(None, None, None)
