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
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from qa.settings import Settings


def timed_protocol(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline of ``header_timeout`` seconds for each
    request head."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._header_deadline)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.info("request headers not received within %gs; closing", header_timeout)
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

    return HeaderTimeoutProtocol


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


__all__ = ["server_config", "timed_protocol"]
