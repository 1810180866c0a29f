"""A small chat-completions HTTP server on loopback, answering with a pluggable responder.

It speaks the part of the OpenAI protocol zsclip's LLM client uses (``POST /v1/chat/completions``, JSON
in, JSON out, ``usage`` with token counts; ``GET /v1/models``), so the real ``openai`` client and the
real HTTP stack are exercised. Two users share it: the toy world's LLM stand-in (``zsclip world
llm-serve``, whose responder answers from the world's ground truth) and the tests of ``zsclip.llm``,
whose responders script replies and whose queued ``Fault`` s make the server misbehave on purpose (an
error status, a delay, a truncated or unbounded body).

    >>> with ChatServer(lambda body: "hello", port=0) as server:   # serves in a background thread
    ...     LLMClient("any", base_url=server.url).complete("hi").text
    'hello'

Token usage is counted in whitespace-separated words, so tests can predict it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

#: request body (the decoded JSON, with the ``Authorization`` header under ``"_auth"``) → reply text
Responder = Callable[[dict[str, Any]], str]
FAULT_KINDS = ("status", "sleep", "short_body", "cut_json", "no_length", "usage")


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, spent on the next request.

    ``status``: answer with HTTP ``status`` (and ``Retry-After: retry_after`` when given); ``sleep``: wait
    ``seconds`` before answering; ``short_body``: send half the body but announce all of it; ``cut_json``:
    send half the body as if it were all; ``no_length``: send the body without ``Content-Length`` and close
    the connection (the client must read to the end of the stream); ``usage``: report ``usage`` (any JSON)
    as the reply's token usage.
    """

    kind: str
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    usage: Any = None


class Refusal(Exception):
    """Raised by a responder to answer with an error ``status`` instead of a reply."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message or f"refused with {status}")
        self.status = status


def echo(body: dict[str, Any]) -> str:
    """A responder that repeats the last message's content after ``echo:``."""
    return "echo: " + message_text(body["messages"][-1].get("content", ""))


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or a list of parts with ``text``."""
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def _words(text: str) -> int:
    return len(text.split())


class ChatServer:
    """A threaded chat-completions server bound to ``host:port`` (port 0: a free port, read back in ``url``).

    ``responder(body)`` gives the reply text, or raises ``Refusal`` for an error status. ``models`` are the
    names ``GET /v1/models`` lists (any model name is answered). ``received`` counts the POST requests that
    arrived; with ``record=True`` their bodies are kept in ``requests`` (tests read them; a long-running
    server should not keep them). ``start()`` serves in a background thread, ``serve_forever()`` in the
    calling one; the context manager starts and stops.
    """

    def __init__(self, responder: Responder = echo, *, host: str = "127.0.0.1", port: int = 0,
                 models: Sequence[str] = ("any",), record: bool = False) -> None:
        self.responder = responder
        self.models = list(models)
        self.record = record
        self.requests: list[dict[str, Any]] = []
        self.received = 0
        self.faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())  # binds now: the port is ours
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL a client is given (ending in ``/v1``)."""
        return f"http://{self._httpd.server_address[0]}:{self.port}/v1"

    def fault(self, kind: str, **kwargs: Any) -> None:
        """Queue a fault (see ``Fault``) for the next request that arrives."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; kinds: {', '.join(FAULT_KINDS)}")
        self.faults.append(Fault(kind, **kwargs))

    def start(self) -> ChatServer:
        """Serve in a daemon thread; returns ``self``."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"zsclip-chat-server-{self.port}")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` or an exception (e.g. ``KeyboardInterrupt``)."""
        try:
            self._httpd.serve_forever(poll_interval=0.05)
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def _reply(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        prompt_tokens = sum(_words(message_text(m.get("content", ""))) for m in body["messages"])
        return {
            "id": f"chatcmpl-{self.received}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "")),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _words(text),
                      "total_tokens": prompt_tokens + _words(text)},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("chat server: " + format, *args)

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None,
                      length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if length != -1:
                    self.send_header("Content-Length", str(len(payload) if length is None else length))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    self.close_connection = True

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
                self._send(status, payload.encode(), headers)

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    self._error(404, f"no route {self.path}")
                    return
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "zsclip"} for m in server.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.received += 1
                try:
                    body = json.loads(raw or b"{}")
                    messages = body.get("messages") if isinstance(body, dict) else None
                    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                        raise ValueError("no 'messages' list of objects")
                except ValueError as exc:
                    self._error(400, f"not a chat-completions request: {exc}")
                    return
                body["_auth"] = self.headers.get("Authorization", "")
                if server.record:
                    with server._lock:
                        server.requests.append(body)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._error(404, f"no route {self.path}")
                    return
                fault = server._next_fault()
                if fault and fault.kind == "status":
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                    self._error(fault.status, f"injected {fault.status}", headers)
                    return
                if fault and fault.kind == "sleep":
                    time.sleep(fault.seconds)
                try:
                    text = server.responder(body)
                except Refusal as refusal:
                    self._error(refusal.status, str(refusal))
                    return
                reply = server._reply(body, text)
                if fault and fault.kind == "usage":
                    reply["usage"] = fault.usage
                payload = json.dumps(reply).encode()
                if fault and fault.kind == "short_body":
                    self.close_connection = True
                    self._send(200, payload[: len(payload) // 2], length=len(payload))
                elif fault and fault.kind == "cut_json":
                    self._send(200, payload[: len(payload) // 2])
                elif fault and fault.kind == "no_length":
                    self.close_connection = True
                    self._send(200, payload, {"Connection": "close"}, length=-1)
                else:
                    self._send(200, payload)

        return Handler
