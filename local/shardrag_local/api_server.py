"""The local HTTP API: the same contract as the deployed API Gateway (request validation, the query state
machine via StartSyncExecution, the same status mapping, throttling with 429), plus local-only shard operations
under /admin.

Throttling: at most ``max_concurrency`` queries run at once; one more is answered ``429`` with ``Retry-After``
at once, before any execution starts, as API Gateway's stage throttling answers before StartSyncExecution. A
queue would only move the wait into the workflow, where a shard branch's deadline would then expire on a healthy
shard: shedding keeps every admitted query within its deadlines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from shardrag.api_contract import error_body
from shardrag.chat.conversations import SessionNotFound
from shardrag.chat.records import ChatCaller, parse_chat_body
from shardrag.chat.sse import DEFAULT_KEEPALIVE_S, pump
from shardrag.errors import RETRY_AFTER_S, BadRequest, ConfigurationError, Overloaded
from shardrag.openapi import openapi_document
from shardrag.request import MAX_BODY_BYTES, parse_query_body

from shardrag_local.query_workers import WorkersUnavailable
from shardrag_local.runtime import LocalRuntime

if TYPE_CHECKING:
    from shardrag.chat.service import ChatService

log = logging.getLogger("shardrag.local.api")
_SESSION = re.compile(r"^/chat/sessions/([0-9a-f]{32})$")
_UPLOAD_NAME = re.compile(r"[A-Za-z0-9._ -]{1,200}")
#: The chat page: plain files, no build step, the same the answer function serves deployed.
WEB_DIR = Path(__file__).resolve().parents[2] / "functions" / "answer" / "web"
WEB_FILES = {
    "/": WEB_DIR / "index.html",
    "/index.html": WEB_DIR / "index.html",
    "/static/chat.js": WEB_DIR / "chat.js",
    "/static/chat.css": WEB_DIR / "chat.css",
}
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
#: Locally: the caller's own identity, which scopes conversations (deployed: the authoriser's principal).
USER_HEADER = "X-ShardRAG-User"
LOCAL_USER = "local"
_ADMIN_SHARD = re.compile(r"^/admin/shards/(\d+)/(stop|start)$")
#: Multi-tenant mode, locally: the caller's tenant (deployed, it comes from the caller's Cognito identity).
TENANT_HEADER = "X-ShardRAG-Tenant"
#: Overrides the default of :func:`default_max_concurrency` (``shardrag serve --max-concurrency`` beats it).
MAX_CONCURRENCY_ENV = "SHARDRAG_MAX_CONCURRENCY"


def default_max_concurrency() -> int:
    """Queries in flight before the API sheds: enough to keep every core busy while one query waits on another
    process (a shard, the model), few enough that each admitted query keeps its latency and its deadlines."""
    if raw := os.environ.get(MAX_CONCURRENCY_ENV):
        return int(raw)
    return 4 * (os.cpu_count() or 1)


class Admission:
    """A non-blocking bound on queries in flight."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max concurrency must be at least 1")
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self.shed = 0

    def try_enter(self) -> bool:
        if self._slots.acquire(blocking=False):
            return True
        self.shed += 1
        return False

    def leave(self) -> None:
        self._slots.release()


class ApiHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _send(self, status: int, body: dict[str, Any] | list[Any], headers: dict[str, str] | None = None) -> None:
        if status == Overloaded.status:  # shed here or inside the workflow: either way, say when to come back
            headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
        if size < 0:
            raise BadRequest("invalid Content-Length")
        if size > MAX_BODY_BYTES:
            # Drain (bounded) so the connection stays usable, then refuse like API Gateway's size limit would.
            self.rfile.read(min(size, 10 * MAX_BODY_BYTES))
            raise BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes")
        return self.rfile.read(size)

    def do_GET(self) -> None:
        runtime = self.server.runtime
        path, _, query = self.path.partition("?")
        if path in WEB_FILES:
            self._send_file(WEB_FILES[path])
            return
        if path == "/chat/sessions":
            self._chat_get(lambda caller: {"sessions": [s.model_dump() for s in self._chat().store.sessions(caller)]})
            return
        if match := _SESSION.match(path):
            session_id = match.group(1)
            self._chat_get(
                lambda caller: {
                    "session_id": session_id,
                    "turns": [t.model_dump() for t in self._chat().store.turns(caller, session_id)],
                }
            )
            return
        if path == "/uploads/status":
            key = parse_qs(query).get("key", [""])[0]
            if not key:
                self._send(400, error_body("bad_request", "key is required"))
            else:
                self._send(200, runtime.upload_status(key))
            return
        if self.path == "/health":
            self._send(200, {"status": "ok", "shards": runtime.settings.store.shard_count})
        elif self.path == "/openapi.json":
            self._send(200, openapi_document())
        elif self.path == "/admin/shards":
            self._send(200, runtime.shard_status())
        else:
            self._send(404, error_body("not_found", f"no route for GET {self.path}"))

    def do_POST(self) -> None:
        started = time.perf_counter()
        headers: dict[str, str] = {}
        try:
            body = self._read_body()
            if self.path == "/query":
                status, response = self._query(body)
            elif self.path == "/chat":
                refused = self._chat_stream(body)
                if refused is None:
                    return  # the event stream was written; the connection closes
                status, response = refused
            elif self.path == "/uploads":
                status, response = self._upload(body)
            elif self.path == "/admin/term-stats/rebuild":
                status, response = 200, self.server.runtime.rebuild_term_stats()
            elif self.path == "/admin/rebalance":
                try:
                    status, response = 200, self.server.runtime.rebalance()
                except ConfigurationError as exc:
                    status, response = 409, error_body("conflict", str(exc))
            elif match := _ADMIN_SHARD.match(self.path):
                status, response = self._admin(int(match.group(1)), match.group(2))
            else:
                status, response = 404, error_body("not_found", f"no route for POST {self.path}")
        except BadRequest as exc:
            status, response = 400, error_body(exc.code, exc.message)
        except WorkersUnavailable as exc:  # stopping, or the workers died: nothing the caller did wrong
            log.warning("%s %s: %s", self.command, self.path, exc)
            status, response = 503, error_body("unavailable", f"{exc}; retry after {RETRY_AFTER_S} s")
            headers["Retry-After"] = str(RETRY_AFTER_S)
        except Exception:  # never a stack trace to the caller
            log.exception("unhandled error for %s", self.path)
            status, response = 500, error_body("internal_error", "internal error; see the server log")
        elapsed = (time.perf_counter() - started) * 1000
        self._send(status, response, {**headers, "Server-Timing": f"total;dur={elapsed:.1f}"})

    def _query(self, body: bytes) -> tuple[int, dict[str, Any]]:
        admission = self.server.admission
        if not admission.try_enter():
            return Overloaded.status, error_body(
                Overloaded.code, f"at capacity ({admission.limit} queries in flight); retry after {RETRY_AFTER_S} s"
            )
        try:
            request = parse_query_body(body)
            # Locally the header stands in for the caller identity API Gateway maps (Cognito claim).
            tenant = self.headers.get(TENANT_HEADER, "")
            return self.server.runtime.execute(request.model_dump(exclude_none=True), tenant=tenant)
        finally:
            admission.leave()

    # -- chat ----------------------------------------------------------------------------------------
    def _chat(self) -> ChatService:
        return self.server.runtime.chat_service()

    def _caller(self) -> ChatCaller:
        # Locally the headers stand in for the identity API Gateway's authoriser gives the answer function.
        owner = self.headers.get(USER_HEADER, "") or LOCAL_USER
        return ChatCaller(tenant=self.headers.get(TENANT_HEADER, ""), owner=owner[:512])

    def _chat_get(self, read: Any) -> None:
        try:
            self._send(200, read(self._caller()))
        except SessionNotFound as exc:
            self._send(404, error_body(exc.code, exc.message))

    def _chat_stream(self, body: bytes) -> tuple[int, dict[str, Any]] | None:
        """``POST /chat``: ``None`` once the event stream was written, else the refusal to send as JSON. A chat
        turn takes an admission slot like a query, for as long as it streams."""
        admission = self.server.admission
        if not admission.try_enter():
            return Overloaded.status, error_body(
                Overloaded.code, f"at capacity ({admission.limit} queries in flight); retry after {RETRY_AFTER_S} s"
            )
        try:
            try:
                request = parse_chat_body(body)
                turn = self._chat().start(request, self._caller())
            except SessionNotFound as exc:
                return 404, error_body(exc.code, exc.message)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Accel-Buffering", "no")
            # No length and no chunked framing: the stream ends when the connection closes.
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def write(data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()

            if not pump(turn.events(), write, keepalive_s=self.server.keepalive_s):
                log.info("chat client went away; generation stopped")
            return None
        finally:
            admission.leave()

    def _upload(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """A presigned PUT for one file into the documents bucket (``uploads/<name>``), as deployed."""
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise BadRequest("request body is not valid JSON") from None
        name = payload.get("filename") if isinstance(payload, dict) else None
        if not isinstance(name, str) or not _UPLOAD_NAME.fullmatch(name):
            raise BadRequest("filename must be 1-200 characters of letters, digits, '.', '_', '-' or spaces")
        key = f"uploads/{name}"
        return 200, {"key": key, "url": self.server.runtime.presigned_upload(key), "method": "PUT"}

    def _send_file(self, path: Path) -> None:
        payload = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", _CONTENT_TYPES[path.suffix])
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(payload)

    def _admin(self, shard: int, action: str) -> tuple[int, dict[str, Any]]:
        runtime = self.server.runtime
        if not 0 <= shard < runtime.settings.store.shard_count:
            return 404, error_body("not_found", f"no shard {shard}")
        if action == "stop":
            runtime.stop_shard(shard)
        else:
            runtime.start_shard(shard)
        return 200, {"shard": shard, "action": action}

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, error_body("method_not_allowed", "use POST /query"))

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    #: Connections waiting to be accepted. The default (5) overflows under a burst of clients, and the kernel
    #: then resets connections: a client must get a 429 from us, never a reset.
    request_queue_size = 1024

    def __init__(
        self,
        runtime: LocalRuntime,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        max_concurrency: int | None = None,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
    ) -> None:
        self.runtime = runtime
        self.admission = Admission(max_concurrency or default_max_concurrency())
        #: Seconds between keep-alive comments on a chat stream that has nothing to send yet.
        self.keepalive_s = keepalive_s
        super().__init__((host, port), ApiHandler)
