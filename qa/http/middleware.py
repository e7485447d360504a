"""One ASGI middleware in front of every route (the API, the page, /mcp, /metrics):

1. a request id: the client's ``X-Request-ID`` when it is sane, else a new one; echoed on
   the response and set for every log line written while the request is served;
2. the Host header must name this server (QA_ALLOWED_HOSTS): otherwise 421, so a page on
   another site cannot read the API through DNS rebinding;
3. the body is read up to QA_MAX_BODY_BYTES (413 above, checked from Content-Length first)
   within QA_BODY_TIMEOUT seconds (408 for a client that sends it too slowly);
4. security headers on every response (``nosniff``, ``Referrer-Policy``, a CSP with
   ``frame-ancestors 'none'``; the page's strict CSP on every HTML response);
5. one access log line and the request metrics, by route template and status.

Header read time is bounded in the server's protocol (qa.http.server), before any of this.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qa.http.observe import HTTP_REQUESTS, HTTP_SECONDS, request_id
from qa.settings import Settings

log = logging.getLogger("qa.http.access")

# The page loads nothing but its own files and talks only to this server; document text is
# rendered as text, and this policy is the second line if that were ever broken.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Anything that is not HTML (JSON, JavaScript, CSS, metrics) runs nothing and is never framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"]
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Host names served when QA_ALLOWED_HOSTS is unset, from the address the server binds:
    the loopback names for a loopback address, any name for a wildcard address (0.0.0.0,
    ::), else that address and the loopback names."""
    host = bind_host.strip().lower()
    if host in ("localhost", "::1", "[::1]") or host.startswith("127."):
        return list(LOOPBACK_NAMES)
    if host in ("", "0.0.0.0", "::", "[::]", "*"):
        return ["*"]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return [host, *LOOPBACK_NAMES]


def allowed_hosts(settings: Settings) -> list[str]:
    return settings.allowed_hosts or default_allowed_hosts(settings.host)


def host_name(header: str) -> str:
    """The name part of a Host header: ``example.com:8000`` → ``example.com``,
    ``[::1]:8000`` → ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end != -1 else header
    return header.partition(":")[0]


def host_allowed(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def _json_error(status: int, code: str, message: str) -> tuple[int, bytes]:
    body = {"error": {"code": code, "message": message}}
    return status, json.dumps(body, separators=(",", ":")).encode()


class BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """See the module docstring. Pure ASGI, so that streamed responses stay streamed."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = allowed_hosts(settings)
        self.max_body = settings.max_body_bytes
        self.body_timeout = settings.body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        rid = given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status_holder: dict[str, Any] = {"status": 500}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                out = list(message.get("headers", []))
                names = {k.lower() for k, _ in out}
                out.append((b"x-request-id", rid.encode()))
                out.extend(h for h in SECURITY_HEADERS if h[0] not in names)
                if b"content-security-policy" not in names:
                    ctype = dict(out).get(b"content-type", b"")
                    csp = PAGE_CSP if ctype.startswith(b"text/html") else API_CSP
                    out.append((b"content-security-policy", csp.encode()))
                message = {**message, "headers": out}
            await send(message)

        try:
            host = host_name(headers.get("host", ""))
            if not host_allowed(host, self.hosts):
                await self._reply(
                    send_with_headers,
                    *_json_error(
                        421,
                        "misdirected_request",
                        f"host {host or '(none)'!r} is not served here; allowed: "
                        f"{', '.join(self.hosts)} (QA_ALLOWED_HOSTS)",
                    ),
                )
                return
            # one spelling of the Host downstream (the MCP SDK compares it case-sensitively)
            scope["headers"] = [
                (k, v.lower()) if k == b"host" else (k, v) for k, v in scope["headers"]
            ]
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                await self._too_large(send_with_headers)
                return
            try:
                body_receive = await self._read_body(receive)
            except BodyTooLarge:
                await self._too_large(send_with_headers)
                return
            except TimeoutError:
                await self._reply(
                    send_with_headers,
                    *_json_error(
                        408,
                        "request_timeout",
                        f"the request body did not arrive within {self.body_timeout:g} s "
                        "(QA_BODY_TIMEOUT)",
                    ),
                    close=True,
                )
                return
            try:
                await self.app(scope, body_receive, send_with_headers)
            except Exception:
                # Answered here rather than by Starlette's outermost error middleware, so
                # that a 500 carries the request id and the headers like any response.
                if status_holder.get("started"):
                    raise
                logging.getLogger("qa.http").exception("unexpected error")
                await self._reply(
                    send_with_headers,
                    *_json_error(500, "internal_error", "internal error; see the server log"),
                )
        finally:
            self._record(scope, status_holder["status"], time.perf_counter() - began)
            request_id.reset(token)

    async def _read_body(self, receive: Receive) -> Receive:
        """Read the whole body (bounded in size and time) and hand it on as one message;
        later receive() calls wait for the client's disconnect as before."""
        chunks: list[bytes] = []
        size = 0
        with anyio.fail_after(self.body_timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request":  # disconnected: pass it on
                    first: Message | None = message
                    break
                size += len(message.get("body", b""))
                if size > self.max_body:
                    raise BodyTooLarge
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                    break
        pending = [first]

        async def replay() -> Message:
            if pending:
                message = pending.pop()
                if message is not None:
                    return message
            return await receive()

        return replay

    async def _too_large(self, send: Send) -> None:
        await self._reply(
            send,
            *_json_error(
                413,
                "body_too_large",
                f"the request body is larger than {self.max_body} bytes (QA_MAX_BODY_BYTES)",
            ),
            close=True,
        )

    @staticmethod
    async def _reply(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "<unmatched>"
        method = scope.get("method", "")
        HTTP_REQUESTS.labels(method=method, route=template, status=str(status)).inc()
        HTTP_SECONDS.labels(method=method, route=template).observe(seconds)
        client = scope.get("client")
        log.info(
            "%s %r %d %.1f ms",
            method,
            scope.get("path", ""),
            status,
            seconds * 1000,
            extra={
                "method": method,
                "path": scope.get("path", ""),
                "route": template,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "client": f"{client[0]}:{client[1]}" if client else None,
            },
        )


__all__ = [
    "API_CSP",
    "PAGE_CSP",
    "GuardMiddleware",
    "allowed_hosts",
    "default_allowed_hosts",
    "host_allowed",
    "host_name",
]
