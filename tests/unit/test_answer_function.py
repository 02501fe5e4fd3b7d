"""The deployed chat front: API Gateway proxy events through ``ChatFront`` and the answer function's streaming
runtime loop, which speaks the Lambda Runtime API to a local stand-in (chunked POST, streaming response mode)
and writes API Gateway's streaming format (metadata JSON, eight NUL bytes, the body)."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from shardrag.chat.condense import DeterministicCondenser
from shardrag.chat.conversations import DynamoDbConversationStore, table_definition
from shardrag.chat.front import ChatFront, HttpResponse
from shardrag.chat.service import ChatService
from shardrag.generation import ExtractiveGenerator
from shardrag.records import Hit

ROOT = Path(__file__).resolve().parents[2]
ANSWER = ROOT / "functions" / "answer"
HIT = Hit(chunk_id="c1", doc_id="tides.txt", score=0.9, text="Tides are caused by the Moon. The Sun adds a little.")


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"answer_{name}", ANSWER / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def retrieve(body: dict[str, Any], tenant: str) -> tuple[int, dict[str, Any]]:
    hit = {"rank": 1, **HIT.model_dump(exclude={"external_id"})}
    return 200, {"hits": [hit], "degraded": False, "shards": {}, "timings_ms": {"embed": 1.0}}


@pytest.fixture
def front(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatFront]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(**table_definition("conversations"))
        chat = ChatService(
            retrieve=retrieve,
            generator=ExtractiveGenerator,
            store=DynamoDbConversationStore(ddb, "conversations"),
            condenser=DeterministicCondenser(),
        )
        yield ChatFront(
            lambda: chat,
            page_dir=ANSWER / "web",
            presign=lambda key: f"https://bucket.s3.amazonaws.com/{key}?X-Amz-Signature=x",
            upload_status=lambda key: {"key": key, "status": "indexed", "chunks": 3},
            tenant_claim="custom:tenant",
        )


def event(
    method: str, path: str, body: Any = None, *, sub: str | None = "user-1", tenant: str = "t1"
) -> dict[str, Any]:
    authorizer = {"claims": {"sub": sub, "custom:tenant": tenant}} if sub else {}
    return {
        "httpMethod": method,
        "path": path,
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
        "requestContext": {"authorizer": authorizer, "identity": {}},
    }


def collect(response: HttpResponse) -> tuple[dict[str, Any], bytes]:
    written: list[bytes] = []
    response.write_to(written.append, keepalive_s=5)
    raw = b"".join(written)
    metadata, _, body = raw.partition(b"\x00" * 8)
    return json.loads(metadata), body


def sse(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if lines:
            events.append((lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])))
    return events


def test_a_chat_streams_in_api_gateways_streaming_format_and_a_follow_up_is_rewritten(front: ChatFront) -> None:
    metadata, body = collect(front.handle(event("POST", "/chat", {"question": "What causes ocean tides?"})))
    assert metadata == {
        "statusCode": 200,
        "headers": {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
    }
    events = sse(body)
    assert events[0][0] == "retrieval" and events[-1][0] == "done"
    session = events[0][1]["session_id"]
    _, body = collect(front.handle(event("POST", "/chat", {"question": "How strong are they?", "session_id": session})))
    assert "tides" in sse(body)[0][1]["retrieval_query"]
    metadata, body = collect(front.handle(event("GET", f"/chat/sessions/{session}")))
    assert metadata["statusCode"] == 200 and len(json.loads(body)["turns"]) == 2
    # The same session id from another identity, or the same identity in another tenant: not found.
    for other in (
        event("GET", f"/chat/sessions/{session}", sub="user-2"),
        event("GET", f"/chat/sessions/{session}", tenant="t2"),
    ):
        assert collect(front.handle(other))[0]["statusCode"] == 404


def test_no_verified_identity_is_403_and_bad_bodies_400(front: ChatFront) -> None:
    assert collect(front.handle(event("POST", "/chat", {"question": "q"}, sub=None)))[0]["statusCode"] == 403
    assert collect(front.handle(event("POST", "/chat", {"question": ""})))[0]["statusCode"] == 400
    assert collect(front.handle(event("POST", "/uploads", {"filename": "../x"})))[0]["statusCode"] == 400
    assert (
        collect(
            front.handle(event("GET", "/uploads/status", None) | {"queryStringParameters": {"key": "t2/uploads/a"}})
        )[0]["statusCode"]
        == 400
    )


def test_the_page_and_uploads_land_in_the_callers_tenant(front: ChatFront) -> None:
    metadata, body = collect(front.handle(event("GET", "/", sub=None)))
    assert metadata["statusCode"] == 200 and b"static/chat.js" in body
    metadata, body = collect(front.handle(event("POST", "/uploads", {"filename": "notes.md"})))
    assert json.loads(body)["key"] == "t1/uploads/notes.md"


class RuntimeApi:
    """A stand-in for the Lambda Runtime API: hands out one event, records the streamed response as sent."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.trailers = b""
        self.done = threading.Event()


@pytest.fixture
def runtime_api() -> Iterator[tuple[RuntimeApi, str, ThreadingHTTPServer]]:
    state = RuntimeApi({})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps(state.payload).encode()
            self.send_response(200)
            self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
            self.send_header("Lambda-Runtime-Deadline-Ms", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            state.headers = dict(self.headers)
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    state.trailers = b"".join(iter(lambda: self.rfile.readline(), b"\r\n"))
                    break
                state.chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            state.done.set()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, f"127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


def test_the_runtime_loop_streams_each_write_as_a_chunk(front: ChatFront, runtime_api: Any) -> None:
    state, api, _ = runtime_api
    state.payload = event("POST", "/chat", {"question": "What causes ocean tides?"})
    _load("runtime").serve(api, front.handle, once=True)
    assert state.headers["Lambda-Runtime-Function-Response-Mode"] == "streaming"
    assert state.headers["Transfer-Encoding"] == "chunked"
    assert json.loads(state.chunks[0][:-8])["statusCode"] == 200 and state.chunks[0].endswith(b"\x00" * 8)
    events = sse(b"".join(state.chunks[1:]))
    assert events[0][0] == "retrieval" and events[-1][0] == "done" and len(state.chunks) >= 4
    assert state.trailers == b""


def test_a_failure_mid_stream_is_reported_in_the_error_trailers(runtime_api: Any) -> None:
    state, api, _ = runtime_api

    def handle(_: dict[str, Any]) -> HttpResponse:
        def body() -> Iterator[bytes]:
            yield b"partial"
            raise RuntimeError("model went away")

        return HttpResponse(200, {}, body())

    _load("runtime").serve(api, handle, once=True)
    assert b"partial" in state.chunks and b"Lambda-Runtime-Function-Error-Type: RuntimeError" in state.trailers


def test_the_handler_module_cold_starts_with_its_page(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardrag import services

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    services.reset_caches()
    handler = _load("handler")
    assert (handler.front.page_dir / "index.html").is_file() and handler.front.tenant_claim is None
    assert (ANSWER / "bootstrap").stat().st_mode & 0o111  # the exec wrapper must be executable
