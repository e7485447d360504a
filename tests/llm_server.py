"""A small OpenAI-compatible chat server for tests: real HTTP on a free local port.

It stands in for vLLM/Ollama/llama.cpp. Each instance answers with one behaviour (a
function of the request body) and records the requests it received.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0


Behaviour = Callable[[dict[str, Any]], Reply]


def completion(content: str, model: str = "tiny") -> Reply:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    return Reply(body=json.dumps(body).encode())


def passages_in(request: dict[str, Any]) -> dict[int, str]:
    """The numbered passages qa put in the prompt: {n: first line of passage text}."""
    user = request["messages"][-1]["content"]
    found = re.findall(r"^\[(\d+)\] [^\n]*\n([^\n]*)", user, flags=re.MULTILINE)
    return {int(n): text for n, text in found}


def cites_passage_one_and_invents_seven(request: dict[str, Any]) -> Reply:
    """Quotes passage [1] faithfully, then cites a passage [7] that was never given."""
    first = passages_in(request)[1]
    return completion(
        f"According to the documents, {first} [1]. Other sources agree [7]. See also [2, 9]."
    )


def is_rewrite(request: dict[str, Any]) -> bool:
    """Whether qa asks for a standalone form of a follow-up (not for an answer)."""
    return "Last question:" in request["messages"][-1]["content"]


def rewrites_to(
    standalone: str, answer: Behaviour = cites_passage_one_and_invents_seven
) -> Behaviour:
    """Rewrites any follow-up to ``standalone``; answers other requests with ``answer``."""

    def behaviour(request: dict[str, Any]) -> Reply:
        return completion(standalone) if is_rewrite(request) else answer(request)

    return behaviour


class LLMServer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append(request)
                outer.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    reply = Reply(404, b'{"error": "not found"}')
                else:
                    reply = outer.behaviour(request)
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (the timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @contextmanager
    def running(self) -> Iterator[LLMServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
