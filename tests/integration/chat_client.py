"""A small server-sent-events client for the chat API tests (what a browser's fetch reader does)."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class ChatReply:
    status: int
    content_type: str
    #: (event name, data, seconds since the request) per event, keep-alive comments left out.
    events: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    comments: int = 0

    @property
    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def first(self, name: str) -> dict[str, Any]:
        return next(data for event, data, _ in self.events if event == name)


def chat(base: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 120) -> ChatReply:
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request(
        "POST",
        "/chat",
        payload,
        {"Content-Type": "application/json", "Accept": "text/event-stream", **(headers or {})},
    )
    response = connection.getresponse()
    reply = ChatReply(response.status, response.getheader("Content-Type", ""))
    if response.status != 200:
        reply.error = json.loads(response.read() or b"{}")
        connection.close()
        return reply
    started = time.perf_counter()
    name, data = None, []
    while True:
        raw = response.fp.readline()
        if not raw:
            break
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            reply.comments += 1
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and (name or data):
            reply.events.append((name or "message", json.loads("\n".join(data)), time.perf_counter() - started))
            name, data = None, []
    connection.close()
    return reply
