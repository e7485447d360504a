"""Run the app under uvicorn with limits on slow clients.

uvicorn bounds the size of a request head (h11, 16 KiB) and the idle time between
requests (keep-alive), but not the time a client takes to send its headers: a client that
trickles one header byte a second holds a connection forever. ``timed_protocol`` adds that
deadline (QA_HEADER_TIMEOUT): the whole request head must arrive within it, counted from
the connection (or the end of the previous response), else the connection is closed. The
body deadline (QA_BODY_TIMEOUT) is enforced by the middleware (qa.http.middleware).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors.multiprocess import Multiprocess

from qa.settings import Settings

log = logging.getLogger(__name__)

WORKER_HEALTHCHECK_S = 120
"""Seconds a worker may take to answer the supervisor's health ping (start-up included)."""


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline of ``header_timeout`` seconds for each
    request head (a module-level class, so that a worker process can be given it)."""

    _header_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, header_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info(
                "request headers not received within %gs; closing", self.header_timeout
            )
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request head has arrived
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's head has the same deadline
        super().on_response_complete()


def timed_protocol(header_timeout: float) -> Callable[..., H11Protocol]:
    """The protocol factory uvicorn is given: ``HeaderTimeoutProtocol`` with a deadline of
    ``header_timeout`` seconds for each request head (picklable, for worker processes)."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout=header_timeout)


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration ``qa serve`` runs with (logging is configured by the
    caller: every line goes through qa.http.observe with its request id)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": timed_protocol(settings.header_timeout),
        "log_config": None,
        "access_log": False,  # the middleware writes one line per request, with its id
        "timeout_keep_alive": 5,
        "server_header": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


@dataclass(frozen=True)
class WorkerApp:
    """The app factory of one worker process: uvicorn pickles it into each process it
    spawns, and each calls it to build its own app (own Engine, own model, own copy of the
    index in service, own reload loop following the ``CURRENT`` pointer). A worker takes
    connections only once its index is loaded (or failed to load), and never watches the
    corpus: with ``--watch`` the supervising process does, once."""

    settings: Settings

    def __call__(self) -> Any:
        from qa.http.app import create_app
        from qa.http.observe import configure_logging

        configure_logging(self.settings.log_format)
        return create_app(self.settings, watch=False, wait_for_index=True)


def _watch_from_supervisor(settings: Settings, stop: threading.Event) -> None:
    """Watch the corpus in this (the supervising) process and publish new generations;
    the workers find them through the pointer within QA_RELOAD_INTERVAL. The embedding
    model loads here on the first update only."""
    from qa.assemble import embedder_from_settings, spec_from_settings, store_from_settings
    from qa.extraction import CorpusLimits
    from qa.updater import Updater, start_watcher

    updater = Updater(
        Path(settings.corpus_dir),
        store_from_settings(settings),  # the folder QA_INDEX_DIR (with its ANN setting), or Milvus
        embedder_from_settings(settings),
        spec_from_settings(settings),
        keep_generations=settings.keep_generations,
        jobs_kept=settings.update_jobs_kept,
        limits=CorpusLimits.from_settings(settings),
    )
    start_watcher(updater, settings.watch_debounce_ms, stop)


def run_server(settings: Settings, *, watch: bool = False, workers: int = 1) -> None:
    """Serve the app on ``settings.host:settings.port`` until stopped (SIGINT/SIGTERM).

    ``workers`` > 1: one supervising process binds the socket and runs that many worker
    processes on it (uvicorn's multiprocess supervisor: spawned processes, a dead worker
    is replaced, SIGTERM stops all). Each worker loads the generation in service and
    follows the ``CURRENT`` pointer of the one index folder by itself, so all of them switch
    within QA_RELOAD_INTERVAL of a publish. Only the supervisor watches the corpus
    (``watch``); nothing is built by a worker at start (``qa serve`` builds before this).
    """
    if workers <= 1:
        from qa.http.app import create_app

        uvicorn.Server(server_config(create_app(settings, watch=watch), settings)).run()
        return
    # a spawned worker imports torch and the app before it can answer the supervisor's
    # health ping: uvicorn's default 5 s kills and respawns it forever on a busy machine
    config = server_config(
        WorkerApp(settings),
        settings,
        factory=True,
        workers=workers,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )
    stop = threading.Event()
    try:
        if watch:
            _watch_from_supervisor(settings, stop)
        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
    finally:
        stop.set()


__all__ = [
    "HeaderTimeoutProtocol",
    "WorkerApp",
    "run_server",
    "server_config",
    "timed_protocol",
]
