"""Test helpers on top of ``zsclip.chat_server``: a recording server and responders that misbehave.

``ChatServer`` here records every request body (``requests``) and answers with ``echo`` by default; faults
are queued with ``server.fault(kind, ...)`` (see ``zsclip.chat_server.Fault``).
"""

from __future__ import annotations

import threading
from typing import Any

from zsclip.chat_server import ChatServer as _ChatServer
from zsclip.chat_server import Fault, Refusal, Responder, echo

__all__ = ["ChatServer", "Fault", "Refusal", "Responder", "echo", "hang_after"]


class ChatServer(_ChatServer):
    """The library's server on a free loopback port, recording request bodies (``requests``)."""

    def __init__(self, responder: Responder = echo) -> None:
        super().__init__(responder, record=True)


def hang_after(answered: int, release: threading.Event, responder: Responder = echo) -> Responder:
    """A responder that answers the first ``answered`` requests and then never answers (until ``release``
    is set, so the server can shut down)."""
    count = 0
    lock = threading.Lock()

    def respond(body: dict[str, Any]) -> str:
        nonlocal count
        with lock:
            count += 1
            mine = count
        if mine > answered:
            release.wait()
        return responder(body)

    return respond
