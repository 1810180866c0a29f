"""A chat-completions server on loopback for testing ``zsclip.llm``: scripted replies and injected faults.

It speaks the part of the OpenAI protocol zsclip uses (``POST /v1/chat/completions``, JSON in, JSON out,
``usage`` with token counts), so the real ``openai`` client and the real HTTP stack are exercised. Faults
are queued and each one is spent on the next request: an error status (optionally with ``Retry-After``),
a delay longer than the client's timeout, a body shorter than its ``Content-Length``, or cut-off JSON.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour: ``kind`` is ``status``, ``sleep``, ``short_body`` or ``cut_json``."""

    kind: str
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0


class Refusal(Exception):
    """Raised by a responder to answer with an error ``status`` instead of a reply."""

    def __init__(self, status: int) -> None:
        super().__init__(f"refused with {status}")
        self.status = status


def echo(body: dict[str, Any]) -> str:
    """The default reply: the last message's content, prefixed with ``echo:``."""
    return "echo: " + str(body["messages"][-1]["content"])


def _words(text: str) -> int:
    return len(text.split())


class ChatServer:
    """A threaded HTTP server answering chat completions with ``responder(request_body)``.

    The responder returns the reply text, or raises ``Refusal`` to answer with an error status instead.
    ``requests`` lists the decoded bodies of every request received (faulty ones included), with the
    ``Authorization`` header under ``"_auth"``. Token usage is counted in words, so tests can predict it.
    """

    def __init__(self, responder: Responder = echo) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL a client is given (ending in ``/v1``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fault(self, kind: str, **kwargs: Any) -> None:
        """Queue a fault for the next request that arrives."""
        self.faults.append(Fault(kind, **kwargs))

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None,
                      length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload) if length is None else length))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                body["_auth"] = self.headers.get("Authorization", "")
                with server._lock:
                    server.requests.append(body)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, b'{"error": {"message": "no such route"}}')
                    return
                fault = server._next_fault()
                if fault and fault.kind == "status":
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                    message = json.dumps({"error": {"message": f"injected {fault.status}", "type": "test"}})
                    self._send(fault.status, message.encode(), headers)
                    return
                if fault and fault.kind == "sleep":
                    time.sleep(fault.seconds)
                try:
                    text = server.responder(body)
                except Refusal as refusal:
                    message = json.dumps({"error": {"message": str(refusal), "type": "test"}})
                    self._send(refusal.status, message.encode())
                    return
                prompt_tokens = sum(_words(str(m.get("content", ""))) for m in body["messages"])
                reply = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _words(text),
                              "total_tokens": prompt_tokens + _words(text)},
                }
                payload = json.dumps(reply).encode()
                if fault and fault.kind == "short_body":
                    self.close_connection = True
                    self._send(200, payload[: len(payload) // 2], length=len(payload))
                    return
                if fault and fault.kind == "cut_json":
                    self._send(200, payload[: len(payload) // 2])
                    return
                try:
                    self._send(200, payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (timeout test)
                    self.close_connection = True

        return Handler
