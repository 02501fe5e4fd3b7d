"""The deployed chat front: an API Gateway proxy event (REST API, Lambda proxy integration with response
streaming) in, a status, headers and a body of byte chunks out.

Routes, the same as the local API server's: ``POST /chat`` (server-sent events), ``GET /chat/sessions``,
``GET /chat/sessions/{id}``, ``POST /uploads`` (a presigned PUT into the documents bucket), ``GET
/uploads/status`` and the page itself (``GET /``, ``/static/chat.js``, ``/static/chat.css``). The caller's identity
comes from what API Gateway verified (a Cognito token's ``sub`` and tenant claim, an IAM caller's ARN, an API
key's id), never from the body or a header the caller writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardrag.api_contract import error_body
from shardrag.chat.conversations import SessionNotFound
from shardrag.chat.records import ChatCaller, ChatEvent, parse_chat_body
from shardrag.chat.service import ChatService
from shardrag.chat.sse import DEFAULT_KEEPALIVE_S, pump
from shardrag.errors import BadRequest, Forbidden

_SESSION = re.compile(r"^/chat/sessions/([0-9a-f]{32})$")
UPLOAD_NAME = re.compile(r"[A-Za-z0-9._ -]{1,200}")
UPLOAD_PREFIX = "uploads/"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
PAGE_FILES = {"/": "index.html", "/static/chat.js": "chat.js", "/static/chat.css": "chat.css"}


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: Iterator[bytes] = field(default_factory=lambda: iter(()))
    #: A chat stream's events, written through :func:`shardrag.chat.sse.pump` (keep-alives between them).
    events: Iterator[ChatEvent] | None = None

    def write_to(self, write: Callable[[bytes], None], *, keepalive_s: float = DEFAULT_KEEPALIVE_S) -> bool:
        """Write the prelude and the body; ``False`` when the client went away first."""
        write(self.prelude())
        if self.events is not None:
            return pump(self.events, write, keepalive_s=keepalive_s)
        for chunk in self.body:
            write(chunk)
        return True

    def prelude(self) -> bytes:
        """API Gateway's streaming format: the metadata as JSON, then eight NUL bytes, then the body as it comes."""
        return json.dumps({"statusCode": self.status, "headers": self.headers}).encode() + b"\x00" * 8


def json_response(status: int, body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(status, {"Content-Type": "application/json"}, iter([json.dumps(body).encode()]))


def caller_of(event: dict[str, Any], *, tenant_claim: str | None) -> ChatCaller:
    """The verified caller: Cognito claims, else the IAM caller's ARN, else the API key's id."""
    context = event.get("requestContext") or {}
    claims = (context.get("authorizer") or {}).get("claims") or {}
    identity = context.get("identity") or {}
    owner = claims.get("sub") or identity.get("userArn") or identity.get("caller") or identity.get("apiKeyId")
    if not owner:
        raise Forbidden("the request carries no verified identity to keep conversations for")
    tenant = str(claims.get(tenant_claim, "")) if tenant_claim else ""
    return ChatCaller(tenant=tenant, owner=str(owner)[:512])


class ChatFront:
    def __init__(
        self,
        chat: Callable[[], ChatService],
        *,
        page_dir: Path,
        presign: Callable[[str], str],
        upload_status: Callable[[str], dict[str, Any]],
        tenant_claim: str | None = None,
    ) -> None:
        self.chat = chat
        self.page_dir = page_dir
        self.presign = presign
        self.upload_status = upload_status
        self.tenant_claim = tenant_claim

    def handle(self, event: dict[str, Any]) -> HttpResponse:
        method = str(event.get("httpMethod", "GET")).upper()
        path = str(event.get("path") or "/")
        try:
            if method == "GET" and path in PAGE_FILES:
                name = PAGE_FILES[path]
                body = (self.page_dir / name).read_bytes()
                return HttpResponse(200, {"Content-Type": _CONTENT_TYPES[Path(name).suffix]}, iter([body]))
            caller = caller_of(event, tenant_claim=self.tenant_claim)
            if method == "POST" and path == "/chat":
                return self._chat(event, caller)
            if method == "GET" and path == "/chat/sessions":
                sessions = self.chat().store.sessions(caller)
                return json_response(200, {"sessions": [s.model_dump() for s in sessions]})
            if method == "GET" and (match := _SESSION.match(path)):
                turns = self.chat().store.turns(caller, match.group(1))
                return json_response(200, {"session_id": match.group(1), "turns": [t.model_dump() for t in turns]})
            if method == "POST" and path == "/uploads":
                return self._upload(event, caller)
            if method == "GET" and path == "/uploads/status":
                key = str((event.get("queryStringParameters") or {}).get("key") or "")
                if not key.startswith(_upload_prefix(caller)):
                    raise BadRequest("key must name one of your uploads")
                return json_response(200, self.upload_status(key))
            return json_response(404, error_body("not_found", f"no route for {method} {path}"))
        except (BadRequest, Forbidden, SessionNotFound) as exc:
            return json_response(exc.status, error_body(exc.code, exc.message))

    def _chat(self, event: dict[str, Any], caller: ChatCaller) -> HttpResponse:
        raw = event.get("body") or ""
        if event.get("isBase64Encoded"):
            import base64

            raw = base64.b64decode(raw).decode("utf-8", "replace")
        turn = self.chat().start(parse_chat_body(raw), caller)
        headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        return HttpResponse(200, headers, events=turn.events())

    def _upload(self, event: dict[str, Any], caller: ChatCaller) -> HttpResponse:
        try:
            payload = json.loads(event.get("body") or "{}")
        except ValueError:
            raise BadRequest("request body is not valid JSON") from None
        name = payload.get("filename") if isinstance(payload, dict) else None
        if not isinstance(name, str) or not UPLOAD_NAME.fullmatch(name):
            raise BadRequest("filename must be 1-200 characters of letters, digits, '.', '_', '-' or spaces")
        key = _upload_prefix(caller) + name
        return json_response(200, {"key": key, "url": self.presign(key), "method": "PUT"})


def _upload_prefix(caller: ChatCaller) -> str:
    # Multi-tenant ingestion files a document by its key's first segment: an upload lands in the caller's tenant.
    return f"{caller.tenant}/{UPLOAD_PREFIX}" if caller.tenant else UPLOAD_PREFIX
