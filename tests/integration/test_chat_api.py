"""POST /chat and the chat page through the local API: the same Express workflow retrieves (generation off),
the answer streams as server-sent events, conversations live in the emulated DynamoDB. The J-chat-stream
acceptance contract, on the test server's own port."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from .chat_client import chat

pytestmark = pytest.mark.integration


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_the_chat_page_and_its_two_files_are_served(api_url: str) -> None:
    status, content_type, body = _get(api_url + "/")
    assert status == 200 and "text/html" in content_type and b"<html" in body.lower()
    for path, kind in (("/static/chat.js", "javascript"), ("/static/chat.css", "css")):
        status, content_type, body = _get(api_url + path)
        assert status == 200 and kind in content_type and body
        assert path.rsplit("/", 1)[1].encode() in _get(api_url + "/")[2]


def test_a_question_streams_retrieval_then_tokens_then_done_and_a_follow_up_is_rewritten(api_url: str) -> None:
    reply = chat(api_url, {"question": "What causes ocean tides?"})
    assert reply.status == 200 and "text/event-stream" in reply.content_type
    assert reply.names[0] == "retrieval" and reply.names[-1] == "done" and reply.names.count("token") >= 2
    retrieval = reply.first("retrieval")
    session = retrieval["session_id"]
    assert isinstance(session, str) and len(session) == 32
    assert retrieval["retrieval_query"] == "What causes ocean tides?"
    assert retrieval["hits"][0]["doc_id"] == "sample/tides.txt"
    assert retrieval["citations"] and retrieval["degraded"] is False
    assert {"embed", "route", "search", "fuse", "condense", "retrieval", "shards"} <= set(retrieval["timings_ms"])
    done = reply.first("done")
    tokens = [e for e in reply.events if e[0] == "token"]
    assert done["answer"] == "".join(e[1]["text"] for e in tokens) and "Moon" in done["answer"]
    assert tokens[0][2] <= reply.events[-1][2]  # tokens arrive before done, in order
    assert done["ttft_ms"] > 0 and done["total_ms"] >= done["ttft_ms"]

    follow = chat(api_url, {"question": "And how strong are they?", "session_id": session})
    used = follow.first("retrieval")["retrieval_query"]
    assert follow.names[-1] == "done" and used != "And how strong are they?" and "tides" in used
    assert follow.first("retrieval")["turn"] == 2

    status, _, body = _get(f"{api_url}/chat/sessions/{session}")
    turns = json.loads(body)["turns"]
    assert status == 200 and [t["status"] for t in turns] == ["done", "done"]
    assert turns[0]["answer"] == done["answer"] and turns[1]["retrieval_query"] == used
    listed = json.loads(_get(api_url + "/chat/sessions")[2])["sessions"]
    assert session in [s["session_id"] for s in listed]

    # Another caller (locally the user header stands in for the identity) cannot read or continue it.
    other = {"X-ShardRAG-User": "mallory"}
    assert chat(api_url, {"question": "hello", "session_id": session}, other).status == 404
    assert _get(f"{api_url}/chat/sessions/{session}", other)[0] == 404
    assert session not in _get(api_url + "/chat/sessions", other)[2].decode()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"question": "hello", "session_id": uuid.uuid4().hex}, 404),
        (b"{not json", 400),
        ({"question": ""}, 400),
        ({"question": "q", "history": [{"role": "user", "text": "x" * 7000}] * 9}, 400),
        ({"question": "q", "history": [{"role": "user", "text": "x"}] * 41}, 400),
        ({"question": "q", "mode": "fuzzy"}, 400),
    ],
)
def test_bad_chat_requests_get_a_json_error_before_any_stream(api_url: str, body: Any, status: int) -> None:
    reply = chat(api_url, body)
    assert reply.status == status and "application/json" in reply.content_type
    assert reply.error and reply.error["error"]["code"]


def test_a_client_history_answers_without_a_session(api_url: str) -> None:
    history = [
        {"role": "user", "text": "How do honeybees communicate?"},
        {"role": "assistant", "text": "With a dance."},
    ]
    reply = chat(api_url, {"question": "What is it called?", "history": history, "mode": "bm25"})
    retrieval = reply.first("retrieval")
    assert retrieval["session_id"] is None and "honeybees" in retrieval["retrieval_query"]
    assert retrieval["mode"] == "bm25" and reply.names[-1] == "done"


def test_a_degraded_retrieval_says_so_in_the_first_event(api_url: str, local_runtime: Any) -> None:
    try:
        local_runtime.stop_shard(1)
        reply = chat(api_url, {"question": "What causes ocean tides?"})
        retrieval = reply.first("retrieval")
        assert retrieval["degraded"] is True and retrieval["shards"]["failed"] == [1]
        for shard in range(4):
            local_runtime.stop_shard(shard)
        reply = chat(api_url, {"question": "What causes ocean tides?"})
        assert reply.names == ["error"] and reply.events[0][1]["status"] == 503
    finally:
        for shard in range(4):
            local_runtime.start_shard(shard)


class SlowGenerator:
    """Tokens that take time, counted as they are produced (a model the client may walk away from)."""

    name = "slow"

    def __init__(self, tokens: int = 400, delay_s: float = 0.01) -> None:
        self.tokens = tokens
        self.delay_s = delay_s
        self.produced = 0

    def stream(self, question: str, hits: Any) -> Any:
        from shardrag.generation.stream import AnswerStream

        def produce(stream: AnswerStream) -> Iterator[str]:
            for i in range(self.tokens):
                time.sleep(self.delay_s)
                self.produced += 1
                yield f"w{i} "

        return AnswerStream(model="slow", citations=[], produce=produce)


@pytest.fixture
def slow_chat(local_runtime: Any) -> Iterator[SlowGenerator]:
    from shardrag.chat.service import ChatService

    real = local_runtime.chat_service()
    generator = SlowGenerator()
    local_runtime._chat = ChatService(
        retrieve=real.retrieve, generator=lambda: generator, store=real.store, condenser=real.condenser
    )
    try:
        yield generator
    finally:
        local_runtime._chat = real


def _open_stream(base: str, body: dict[str, Any]) -> tuple[socket.socket, bytes]:
    """Send a chat request on a raw socket and read until the first token arrives."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    seen = b""
    while b"event: token" not in seen:
        chunk = sock.recv(65536)
        assert chunk, seen
        seen += chunk
    return sock, seen


def test_a_client_that_disconnects_stops_generation_and_the_partial_turn_is_kept(
    api_url: str, slow_chat: SlowGenerator
) -> None:
    sock, seen = _open_stream(api_url, {"question": "What causes ocean tides?"})
    session = json.loads(seen.split(b"event: retrieval\ndata: ", 1)[1].split(b"\n", 1)[0])["session_id"]
    sock.close()
    deadline = time.monotonic() + 20
    turns: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, _, body = _get(f"{api_url}/chat/sessions/{session}")
        if status == 200:
            turns = json.loads(body)["turns"]
            break
        time.sleep(0.2)
    produced = slow_chat.produced
    time.sleep(0.5)
    assert slow_chat.produced == produced < slow_chat.tokens  # it stopped, well before the end
    assert turns and turns[0]["status"] == "stopped" and turns[0]["answer"].startswith("w0")


def test_chat_turns_take_admission_slots_like_queries(local_runtime: Any, slow_chat: SlowGenerator) -> None:
    from shardrag_local.api_server import ApiServer

    server = ApiServer(local_runtime, port=0, max_concurrency=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        sock, _ = _open_stream(base, {"question": "What causes ocean tides?"})
        shed = chat(base, {"question": "What causes ocean tides?"})
        assert shed.status == 429 and shed.error and shed.error["error"]["code"] == "too_many_requests"
        request = urllib.request.Request(
            base + "/query", data=b'{"question": "tides"}', headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 429 and refused.value.headers["Retry-After"]
        sock.close()
    finally:
        server.shutdown()
        server.server_close()


def test_keep_alive_comments_while_retrieval_is_slow(local_runtime: Any) -> None:
    from shardrag_local.api_server import ApiServer

    real = local_runtime.execute

    def slow_execute(body: dict[str, Any], *, tenant: str = "") -> tuple[int, dict[str, Any]]:
        time.sleep(0.5)
        return real(body, tenant=tenant)

    server = ApiServer(local_runtime, port=0, keepalive_s=0.1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local_runtime.execute = slow_execute
    try:
        reply = chat(f"http://127.0.0.1:{server.server_address[1]}", {"question": "What causes ocean tides?"})
        assert reply.comments >= 3 and reply.names[0] == "retrieval" and reply.names[-1] == "done"
    finally:
        local_runtime.execute = real
        server.shutdown()
        server.server_close()
