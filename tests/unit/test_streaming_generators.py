"""Streaming answers: the extractive generator sentence by sentence, Bedrock ``ConverseStream`` through the real
boto3 client parsing real event-stream frames (``application/vnd.amazon.eventstream``), and an OpenAI-compatible
endpoint streaming ``chat.completion.chunk`` server-sent events from a real HTTP server."""

from __future__ import annotations

import binascii
import json
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from shardrag.errors import GenerationFailed
from shardrag.generation import BedrockGenerator, ExtractiveGenerator, OpenAICompatibleGenerator, PromptBuilder
from shardrag.records import Hit

HITS = [
    Hit(chunk_id="c1", doc_id="d1", score=0.9, text="The router hashes the doc id. It picks one shard.", source="s1"),
    Hit(chunk_id="c2", doc_id="d2", score=0.8, text="Each shard is a Milvus Lite file.", source="s2"),
]
QUESTION = "How does the router choose a shard?"


# -- extractive -------------------------------------------------------------------------------------------
words = st.text(alphabet="abcdefghij ", min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.lists(words, min_size=1, max_size=4), min_size=1, max_size=4), question=words)
def test_extractive_stream_is_the_answer_run_gives_sentence_by_sentence(texts: list[list[str]], question: str) -> None:
    hits = [
        Hit(chunk_id=f"c{i}", doc_id=f"d{i}", score=1 - i / 10, text=". ".join(t) + ".") for i, t in enumerate(texts)
    ]
    generator = ExtractiveGenerator()
    answer = generator.run(question, hits)
    stream = generator.stream(question, hits)
    parts = list(stream)
    assert "".join(parts) == answer.text
    assert len(parts) >= 2 or not answer.citations  # a sentence, then the marker that cites it
    assert stream.citations == answer.citations
    assert stream.answer() == answer


# -- Bedrock ConverseStream on the wire -------------------------------------------------------------------
def _header(name: str, value: str) -> bytes:
    raw = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw


def frame(headers: dict[str, str], payload: dict[str, Any]) -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC), headers, payload, message CRC."""
    head = b"".join(_header(k, v) for k, v in headers.items())
    body = json.dumps(payload).encode()
    total = 12 + len(head) + len(body) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + head + body
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def event(name: str, payload: dict[str, Any]) -> bytes:
    return frame({":event-type": name, ":content-type": "application/json", ":message-type": "event"}, payload)


def exception(name: str, message: str) -> bytes:
    headers = {":exception-type": name, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, {"message": message})


class _Raw:
    """What botocore reads an event stream from (``raw.stream()``), recording whether it was closed."""

    def __init__(self, frames: list[bytes], delay_s: float = 0.0) -> None:
        self.frames = frames
        self.delay_s = delay_s
        self.sent = 0
        self.closed = False

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        for data in self.frames:
            if self.closed:
                return
            time.sleep(self.delay_s)
            self.sent += 1
            yield data

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.closed = True


def bedrock_client(raw: _Raw, captured: list[dict[str, Any]]) -> Any:
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )

    def send(request: Any, **_: Any) -> AWSResponse:
        captured.append(json.loads(request.body))
        return AWSResponse(request.url, 200, {"content-type": "application/vnd.amazon.eventstream"}, raw)

    client.meta.events.register("before-send.bedrock-runtime.ConverseStream", send)
    return client


def happy_frames(texts: list[str]) -> list[bytes]:
    return [
        event("messageStart", {"role": "assistant"}),
        *[event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}}) for t in texts],
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event(
            "metadata",
            {"usage": {"inputTokens": 50, "outputTokens": 7, "totalTokens": 57}, "metrics": {"latencyMs": 9}},
        ),
    ]


def test_bedrock_streams_the_deltas_with_usage_and_the_cited_passages() -> None:
    captured: list[dict[str, Any]] = []
    raw = _Raw(happy_frames(["The router ", "hashes the ", "doc id [1]."]))
    generator = BedrockGenerator("m", client=bedrock_client(raw, captured), prompt_builder=PromptBuilder())
    stream = generator.stream(QUESTION, HITS)
    assert [c.ref for c in stream.citations] == [1, 2]  # what [n] may refer to, known before the first token
    assert list(stream) == ["The router ", "hashes the ", "doc id [1]."]
    assert stream.usage == {"input_tokens": 50, "output_tokens": 7}
    assert stream.finish_reason == "end_turn"
    assert [c.ref for c in stream.answer().citations] == [1]
    assert captured[0]["messages"][0]["content"][0]["text"].startswith("<context>")


@pytest.mark.parametrize("name", ["throttlingException", "modelStreamErrorException", "internalServerException"])
def test_bedrock_exception_event_mid_stream_is_generation_failed(name: str) -> None:
    raw = _Raw([*happy_frames(["partial "])[:2], exception(name, "slow down")])
    generator = BedrockGenerator("m", client=bedrock_client(raw, []), prompt_builder=PromptBuilder())
    stream = generator.stream(QUESTION, HITS)
    with pytest.raises(GenerationFailed, match=name[0].upper() + name[1:]):
        list(stream)
    assert stream.text == "partial "


def test_bedrock_unusable_stop_reason_is_generation_failed() -> None:
    frames = happy_frames(["x"])
    frames[3] = event("messageStop", {"stopReason": "content_filtered"})
    generator = BedrockGenerator("m", client=bedrock_client(_Raw(frames), []), prompt_builder=PromptBuilder())
    with pytest.raises(GenerationFailed, match="content_filtered"):
        list(generator.stream(QUESTION, HITS))


def test_closing_a_bedrock_stream_stops_reading_the_model() -> None:
    raw = _Raw(happy_frames([f"t{i} " for i in range(50)]))
    generator = BedrockGenerator("m", client=bedrock_client(raw, []), prompt_builder=PromptBuilder())
    stream = generator.stream(QUESTION, HITS)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert raw.closed and raw.sent < 10


# -- OpenAI-compatible stream: true ----------------------------------------------------------------------
def chunk(content: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    if usage is not None:
        body |= {"choices": [], "usage": usage}
    else:
        delta = {"role": "assistant", "content": content} if content is not None else {}
        body |= {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}
    return f"data: {json.dumps(body)}\n\n"


class SseEndpoint:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.written = 0
        self.delay_s = 0.0
        self.gone = threading.Event()


@pytest.fixture
def sse() -> Iterator[tuple[SseEndpoint, str]]:
    state = SseEndpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                for line in state.lines:
                    time.sleep(state.delay_s)
                    self.wfile.write(line.encode())
                    self.wfile.flush()
                    state.written += 1
            except OSError:
                state.gone.set()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_streams_deltas_and_usage(sse: tuple[SseEndpoint, str]) -> None:
    state, url = sse
    state.lines = [
        chunk(""),
        chunk("Hashing "),
        ": keep-alive\n\n",
        chunk("picks the shard [2]."),
        chunk(finish="stop"),
        chunk(usage={"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}),
        "data: [DONE]\n\n",
    ]
    stream = OpenAICompatibleGenerator(url, "m").stream(QUESTION, HITS)
    assert list(stream) == ["Hashing ", "picks the shard [2]."]
    assert stream.usage == {"input_tokens": 40, "output_tokens": 6}
    assert stream.finish_reason == "stop"
    assert [c.ref for c in stream.answer().citations] == [2]
    assert state.requests[0]["stream"] is True and state.requests[0]["stream_options"] == {"include_usage": True}


def test_openai_stream_cut_before_done_is_generation_failed(sse: tuple[SseEndpoint, str]) -> None:
    state, url = sse
    state.lines = [chunk("Hashing ")]
    with pytest.raises(GenerationFailed, match="ended the stream"):
        list(OpenAICompatibleGenerator(url, "m").stream(QUESTION, HITS))


def test_openai_error_chunk_is_generation_failed(sse: tuple[SseEndpoint, str]) -> None:
    state, url = sse
    state.lines = [f"data: {json.dumps({'error': {'message': 'overloaded'}})}\n\n"]
    with pytest.raises(GenerationFailed, match="overloaded"):
        list(OpenAICompatibleGenerator(url, "m").stream(QUESTION, HITS))


def test_closing_an_openai_stream_closes_the_connection(sse: tuple[SseEndpoint, str]) -> None:
    state, url = sse
    state.delay_s = 0.01
    state.lines = [chunk(f"t{i} ") for i in range(2000)] + ["data: [DONE]\n\n"]
    stream = OpenAICompatibleGenerator(url, "m").stream(QUESTION, HITS)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert state.gone.wait(10), "the endpoint kept writing to a closed stream"
    assert state.written < 2000


def test_bedrock_complete_sends_the_callers_prompt_at_temperature_zero() -> None:
    from botocore.stub import Stubber

    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    with Stubber(client) as stub:
        stub.add_response(
            "converse",
            {
                "output": {"message": {"role": "assistant", "content": [{"text": "ocean tides strength"}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 20, "outputTokens": 3, "totalTokens": 23},
                "metrics": {"latencyMs": 5},
            },
            {
                "modelId": "m",
                "system": [{"text": "rewrite"}],
                "messages": [{"role": "user", "content": [{"text": "<conversation/>"}]}],
                "inferenceConfig": {"maxTokens": 64, "temperature": 0.0},
            },
        )
        generator = BedrockGenerator("m", client=client, temperature=0.7)
        assert generator.complete("rewrite", "<conversation/>", max_tokens=64) == "ocean tides strength"
